// Tokenizers: tokenizer.json (every component type) and SentencePiece models, loaded and
// then used on a few texts, the way `modula tokenize` and the server use them.
#include "modula/text/tokenizer.h"
#include "targets.h"

namespace modula::fuzz {

// Encode, decode what came out, and the per-token lookups.
static void use_tokenizer(const text::Tokenizer& tok, const std::string& input) {
  const std::string texts[] = {"Hello world", "  héllo,\tWORLD!! 123 ünïcödé 日本語 🙂\n",
                               input.substr(0, 256)};
  for (const auto& t : texts) {
    for (bool special : {true, false}) {
      auto ids = tok.encode(t, special);
      (void)tok.decode(ids, false);
      (void)tok.decode(ids, true);
      for (auto id : ids) (void)tok.token_to_id(tok.id_to_token(id));
    }
  }
}

void fuzz_tokenizer_json(const std::string& input) {
  std::string path = write_scratch("tokenizer.json", input);
  expect_clean_error([&] { use_tokenizer(*text::Tokenizer::from_file(path), input); });
}

void fuzz_sentencepiece(const std::string& input) {
  std::string path = write_scratch("tokenizer.model", input);
  expect_clean_error([&] { use_tokenizer(*text::Tokenizer::from_file(path), input); });
}

}  // namespace modula::fuzz
