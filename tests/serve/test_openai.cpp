// The OpenAI wire format without a model: request parsing and its errors, stop strings
// across token boundaries, chat templates.
#include <gtest/gtest.h>

#include "modula/serve/chat_template.h"
#include "modula/serve/openai.h"

using namespace modula::serve;

namespace {

std::string error_of(const std::string& body, bool chat = false) {
  try {
    parse_request(body, chat);
  } catch (const ApiError& e) {
    EXPECT_EQ(e.status, 400);
    return e.param + ": " + e.what();
  }
  return "no error";
}

}  // namespace

TEST(OpenAi, ParsesCompletionFields) {
  auto r = parse_request(R"({"model": "m", "prompt": "hi", "max_tokens": 5, "temperature": 0, "top_p": 0.5,
                             "top_k": -1, "seed": 7, "stop": ["a", "bc"], "stream": true,
                             "stream_options": {"include_usage": true}, "user": "ignored", "n": 1})",
                         false);
  EXPECT_EQ(r.model, "m");
  EXPECT_EQ(*r.prompt_text, "hi");
  EXPECT_EQ(*r.max_tokens, 5);
  EXPECT_EQ(r.temperature, 0);
  EXPECT_EQ(r.top_p, 0.5);
  EXPECT_EQ(r.top_k, 0);
  EXPECT_EQ(*r.seed, 7u);
  EXPECT_EQ(r.stop, (std::vector<std::string>{"a", "bc"}));
  EXPECT_TRUE(r.stream && r.include_usage && r.add_special_tokens);
  auto ids = parse_request(R"({"model": "m", "prompt": [[1, 2, 3]]})", false);
  EXPECT_EQ(ids.prompt_ids, (std::vector<int64_t>{1, 2, 3}));
  EXPECT_EQ(*ids.max_tokens, 16);  // OpenAI's default
  EXPECT_EQ(ids.temperature, 1.0);
  auto chat = parse_request(
      R"({"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]})",
      true);
  EXPECT_EQ(chat.messages.at(0).content, "ab");
  EXPECT_FALSE(chat.max_tokens);
  EXPECT_FALSE(chat.add_special_tokens);
}

TEST(OpenAi, RejectsBadFieldsByName) {
  EXPECT_NE(error_of("{").find("not valid JSON"), std::string::npos);
  EXPECT_NE(error_of(R"({"prompt": "x"})").find("model"), std::string::npos);
  EXPECT_EQ(error_of(R"({"model": "m", "prompt": "x", "max_tokens": 1.5})").rfind("max_tokens:", 0), 0u);
  EXPECT_EQ(error_of(R"({"model": "m", "prompt": "x", "max_tokens": 0})").rfind("max_tokens:", 0), 0u);
  EXPECT_EQ(error_of(R"({"model": "m", "prompt": "x", "temperature": 3})").rfind("temperature:", 0), 0u);
  EXPECT_EQ(error_of(R"({"model": "m", "prompt": "x", "top_p": 0})").rfind("top_p:", 0), 0u);
  EXPECT_EQ(error_of(R"({"model": "m", "prompt": "x", "stop": [""]})").rfind("stop:", 0), 0u);
  EXPECT_EQ(error_of(R"({"model": "m", "prompt": "x", "stop": ["a","b","c","d","e"]})").rfind("stop:", 0), 0u);
  EXPECT_EQ(error_of(R"({"model": "m", "prompt": "x", "stream": "yes"})").rfind("stream:", 0), 0u);
  EXPECT_EQ(error_of(R"({"model": "m", "prompt": ""})").rfind("prompt:", 0), 0u);
  EXPECT_EQ(error_of(R"({"model": "m", "prompt": ["a", "b"]})").rfind("prompt:", 0), 0u);
  EXPECT_EQ(error_of(R"({"model": "m", "prompt": [1, "b"]})").rfind("prompt:", 0), 0u);
  EXPECT_EQ(error_of(R"({"model": "m", "prompt": "x", "logprobs": 21})").rfind("logprobs:", 0), 0u);
  EXPECT_EQ(error_of(R"({"model": "m", "messages": [{"role": "user", "content": "x"}], "top_logprobs": 2})", true)
                .rfind("top_logprobs:", 0),
            0u);
  EXPECT_EQ(error_of(R"({"model": "m", "prompt": "x", "presence_penalty": 1})").rfind("presence_penalty:", 0), 0u);
  EXPECT_EQ(error_of(R"({"model": "m", "prompt": "x", "response_format": {"type": 3}})").rfind("response_format", 0),
            0u);
  EXPECT_EQ(error_of(R"({"model": "m", "messages": []})", true).rfind("messages:", 0), 0u);
  EXPECT_EQ(error_of(R"({"model": "m", "messages": [{"role": "user"}]})", true).rfind("messages[0].content:", 0), 0u);
  // Found by fuzz_openai_request: a number beyond double threw nlohmann's out_of_range.406.
  EXPECT_EQ(error_of("111111111e111111").rfind(": the body is not valid JSON", 0), 0u);
  // A hostile body nested 300,000 deep parsed and then overflowed the stack in the error
  // message's dump() (SIGSEGV, the server down); now refused while parsing.
  const std::string deep(300000, '[');
  EXPECT_EQ(error_of(R"({"model": "m", "prompt": "x", "temperature": )" + deep + std::string(300000, ']') + "}"),
            ": the body is not valid JSON: nested deeper than 32 levels");
  // null means "unset", as clients send it.
  EXPECT_EQ(error_of(R"({"model": "m", "prompt": "x", "stop": null, "logprobs": null, "seed": null})"), "no error");
}

TEST(OpenAi, StopStringsMatchAcrossPieces) {
  StopMatcher s({"END", "xy"});
  EXPECT_EQ(s.push("abc E"), "abc ");  // "E" may begin "END"
  EXPECT_EQ(s.push("N"), "");
  EXPECT_EQ(s.push("Dtail"), "");
  EXPECT_TRUE(s.stopped());
  StopMatcher t({"END"});
  EXPECT_EQ(t.push("EN"), "");
  EXPECT_EQ(t.push("x"), "ENx");
  EXPECT_EQ(t.push("E"), "");
  EXPECT_EQ(t.flush(), "E");
  EXPECT_FALSE(t.stopped());
}

TEST(ChatTemplate, RendersChatMl) {
  const std::string tmpl =
      "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + "
      "'\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";
  EXPECT_EQ(render_chat_template(tmpl, {{"system", "Be brief."}, {"user", "Hi"}}, "", "", true),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
}

TEST(ChatTemplate, RendersLlama2WithSystemAndAlternation) {
  const std::string tmpl =
      "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = "
      "messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif "
      "%}{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ "
      "raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if "
      "loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + "
      "'\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}{% if "
      "message['role'] == 'user' %}{{ bos_token + '[INST] ' + content | trim + ' [/INST]' }}{% elif message['role'] "
      "== 'assistant' %}{{ ' ' + content | trim + ' ' + eos_token }}{% endif %}{% endfor %}";
  EXPECT_EQ(render_chat_template(tmpl, {{"system", "S"}, {"user", "Hi "}, {"assistant", "Yo"}, {"user", "More"}}, "<s>",
                                 "</s>", true),
            "<s>[INST] <<SYS>>\nS\n<</SYS>>\n\nHi [/INST] Yo </s><s>[INST] More [/INST]");
  try {
    render_chat_template(tmpl, {{"user", "a"}, {"user", "b"}}, "<s>", "</s>", true);
    FAIL() << "alternation not enforced";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("must alternate"), std::string::npos);
  }
}

TEST(ChatTemplate, TrimsBlocksLikeHuggingFace) {
  const std::string tmpl =
      "{% for message in messages %}\n  {% if message.role == 'user' %}\nUser: {{ message.content }}\n  {% endif "
      "%}\n{% endfor %}\n{% if add_generation_prompt %}\nAssistant:\n{% endif %}\n";
  EXPECT_EQ(render_chat_template(tmpl, {{"system", "x"}, {"user", "Hi"}}, "", "", true), "User: Hi\nAssistant:\n");
  EXPECT_EQ(render_chat_template("{{- 'a' -}}  \n {{ 'b' }}", {}, "", "", false), "ab");
}

TEST(ChatTemplate, UnsupportedConstructsAreErrors) {
  for (std::string t : {"{% macro f() %}{% endmacro %}", "{{ messages | tojson }}", "{{ namespace(a=1) }}",
                        "{{ messages[0].content.strip() }}", "{% for m in messages %}", "{{ 'a' "})
    EXPECT_THROW(render_chat_template(t, {{"user", "x"}}, "", "", true), std::invalid_argument) << t;
  // Found by fuzz_chat_template: "{%-%}" popped a character off an empty tag (a 2^56-byte
  // allocation under ASan); one '-' is the left one, and the tag is empty (Jinja: an error too).
  EXPECT_THROW(render_chat_template("a {%-%} b", {{"user", "x"}}, "", "", true), std::invalid_argument);
  EXPECT_EQ(render_chat_template("a {#-#} b", {{"user", "x"}}, "", "", true), "a b");
  EXPECT_THROW(render_chat_template("{{-}}", {{"user", "x"}}, "", "", true), std::invalid_argument);
  // Found by fuzz_chat_template: an integer beyond int64 threw std::out_of_range ("stoll").
  try {
    render_chat_template("{{ messages[1:33333333333333333333] }}", {{"user", "x"}}, "", "", true);
    FAIL() << "no exception";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("[chat template] integer 33333333333333333333 is out of range"),
              std::string::npos)
        << e.what();
  }
}
