// Chat templates (tokenizer_config.json "chat_template", Jinja) rendered for the subset
// that simple templates use, with the environment Hugging Face renders them in
// (trim_blocks, lstrip_blocks). A construct outside the subset is an error, never a guess.
//
// Supported: text, {{ expr }}, {# comments #}, whitespace control ({%- -%} {{- -}}),
// {% if %}/{% elif %}/{% else %}, {% for x in expr %} with loop.index/index0/first/last/
// length, {% set name = expr %}; expressions: string/integer/bool/none literals, names,
// a.b, a['b'], a[i], a[i:j], + - * / % ~, == != < > <= >=, in / not in, and/or/not,
// x if c else y, is [not] defined/none/string, filters trim/length/upper/lower/string,
// raise_exception(msg). Variables: messages (role, content), bos_token, eos_token,
// add_generation_prompt.
//
//   auto text = modula::serve::render_chat_template(tmpl, {{"user", "Hi"}}, "<s>", "</s>", true);
#pragma once

#include <string>
#include <vector>

#include "modula/serve/openai.h"  // ChatMessage

namespace modula::serve {

// Throws std::invalid_argument ("[chat template] ...") for a construct outside the subset,
// a syntax error, or the template's own raise_exception (its message).
std::string render_chat_template(const std::string& tmpl, const std::vector<ChatMessage>& messages,
                                 const std::string& bos_token, const std::string& eos_token,
                                 bool add_generation_prompt);

}  // namespace modula::serve
