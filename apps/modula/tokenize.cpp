#include <iostream>

#include "commands.h"
#include "flags.h"
#include "modula/text/tokenizer.h"

namespace modula::cli {

void add_tokenize(CLI::App& app) {
  auto* cmd = app.add_subcommand("tokenize", "Encode text to ids (or decode ids to text) with a tokenizer");
  static std::string path, text;
  static std::vector<int64_t> ids;
  static bool no_special = false, tokens = false;
  cmd->add_option("--tokenizer,-t", path, "tokenizer.json, SentencePiece .model, or a model folder")->required();
  cmd->add_option("text", text, "Text to encode");
  cmd->add_option("--decode", ids, "Ids to decode instead")->delimiter(',')->check(flags::token_id());
  cmd->add_flag("--no-special", no_special, "Do not add special tokens (post-processor)");
  cmd->add_flag("--tokens", tokens, "Also print the token strings");
  cmd->callback([] {
    auto tok = text::Tokenizer::from_file(path);
    if (!ids.empty()) {
      std::cout << tok->decode(ids) << "\n";
      return;
    }
    auto out = tok->encode(text, !no_special);
    for (size_t i = 0; i < out.size(); ++i) std::cout << (i ? " " : "") << out[i];
    std::cout << "\n";
    if (tokens) {
      for (size_t i = 0; i < out.size(); ++i) std::cout << (i ? " " : "") << tok->id_to_token(out[i]);
      std::cout << "\n";
    }
  });
}

}  // namespace modula::cli
