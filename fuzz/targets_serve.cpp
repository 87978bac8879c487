// What the server reads from clients and model folders: request bodies of /v1/completions
// and /v1/chat/completions, and tokenizer_config.json chat templates.
#include "modula/serve/chat_template.h"
#include "modula/serve/openai.h"
#include "targets.h"

namespace modula::fuzz {

void fuzz_openai_request(const std::string& input) {
  for (bool chat : {false, true}) {
    expect_clean_error([&] {
      auto request = serve::parse_request(input, chat);
      (void)serve::usage_body(1, 2).dump();
    });
  }
}

// The input is the template, rendered for a short conversation.
void fuzz_chat_template(const std::string& input) {
  const std::vector<serve::ChatMessage> messages = {
      {"system", "Be brief."}, {"user", "Hi {{ there }}"}, {"assistant", "Hello."}, {"user", "Bye"}};
  for (bool generation_prompt : {false, true}) {
    expect_clean_error([&] { (void)serve::render_chat_template(input, messages, "<s>", "</s>", generation_prompt); });
  }
}

}  // namespace modula::fuzz
