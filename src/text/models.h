// tokenizer.json "model" section: BPE, WordPiece, WordLevel, Unigram.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "text/errors.h"

namespace modula::text {

class Model {
 public:
  virtual ~Model() = default;
  // Appends the ids of one pre-tokenized word.
  virtual void tokenize(const std::string& word, std::vector<int64_t>& ids) const = 0;
  virtual std::optional<int64_t> token_to_id(const std::string& token) const = 0;
  virtual std::optional<std::string> id_to_token(int64_t id) const = 0;
  virtual int64_t vocab_size() const = 0;
};

// token <-> id maps shared by the models.
class Vocab {
 public:
  void add(const std::string& token, int64_t id);
  std::optional<int64_t> find(const std::string& token) const;
  std::optional<std::string> token(int64_t id) const;
  int64_t size() const { return static_cast<int64_t>(ids_.size()); }

 private:
  std::unordered_map<std::string, int64_t> ids_;
  std::unordered_map<int64_t, std::string> tokens_;
};

// {"token": id, ...}
Vocab parse_vocab_object(const json& j, const std::string& where);

std::unique_ptr<Model> make_bpe(const json& j, const std::string& where);
std::unique_ptr<Model> make_wordpiece(const json& j, const std::string& where);
std::unique_ptr<Model> make_wordlevel(const json& j, const std::string& where);
std::unique_ptr<Model> make_unigram(const json& j, const std::string& where);

// Dispatches on model.type (inferred from the fields when absent, like HF's untagged form).
std::unique_ptr<Model> make_model(const json& j, const std::string& where);

// "<0xAB>": the byte-fallback token of a byte.
std::string byte_fallback_token(unsigned char b);

}  // namespace modula::text
