// Tokenizers: Hugging Face tokenizer.json (byte-level BPE, WordPiece, Unigram) and
// SentencePiece .model files, with ids and decoded text identical to the reference.
//
//   auto tok = modula::text::Tokenizer::from_file("tokenizer.json");
//   std::vector<int64_t> ids = tok->encode("Hello world");   // post-processor applied
//   std::string text = tok->decode(ids);                     // special tokens skipped
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace modula::text {

// Thrown for malformed/unsupported tokenizer files; what() starts with "[tokenizer] ".
struct TokenizerError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // path: a tokenizer.json, a SentencePiece .model, or a folder holding one of them
  // (tokenizer.json preferred, then tokenizer.model).
  static std::unique_ptr<Tokenizer> from_file(const std::string& path);

  // add_special_tokens: apply the post-processor template (e.g. [CLS] ... [SEP]),
  // as HF tokenizers' encode(text) does by default.
  virtual std::vector<int64_t> encode(const std::string& text, bool add_special_tokens = true) const = 0;
  // skip_special_tokens defaults to true, like HF's tokenizer.decode.
  virtual std::string decode(const std::vector<int64_t>& ids, bool skip_special_tokens = true) const = 0;

  virtual int64_t vocab_size() const = 0;  // including added tokens
  virtual std::optional<int64_t> token_to_id(const std::string& token) const = 0;
  virtual std::string id_to_token(int64_t id) const = 0;  // throws on out-of-range id
};

}  // namespace modula::text
