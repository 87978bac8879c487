#include "text/models.h"

#include <cstdio>

namespace modula::text {

void Vocab::add(const std::string& token, int64_t id) {
  ids_[token] = id;
  tokens_[id] = token;
}

std::optional<int64_t> Vocab::find(const std::string& token) const {
  auto it = ids_.find(token);
  if (it == ids_.end()) return std::nullopt;
  return it->second;
}

std::optional<std::string> Vocab::token(int64_t id) const {
  auto it = tokens_.find(id);
  if (it == tokens_.end()) return std::nullopt;
  return it->second;
}

Vocab parse_vocab_object(const json& j, const std::string& where) {
  const json& v = require(j, where, "vocab");
  if (!v.is_object()) config_fail(where + ".vocab", "expected an object of token -> id");
  Vocab vocab;
  for (auto it = v.begin(); it != v.end(); ++it) {
    if (!it.value().is_number_integer()) config_fail(where + ".vocab[\"" + it.key() + "\"]", "expected an integer id");
    vocab.add(it.key(), it.value().get<int64_t>());
  }
  return vocab;
}

std::string byte_fallback_token(unsigned char b) {
  char buf[8];
  std::snprintf(buf, sizeof(buf), "<0x%02X>", b);
  return buf;
}

namespace {

// HF WordLevel: whole word or unk.
class WordLevel : public Model {
 public:
  WordLevel(const json& j, const std::string& where)
      : vocab_(parse_vocab_object(j, where)), unk_(get_string_or(j, where, "unk_token", "<unk>")) {}

  void tokenize(const std::string& word, std::vector<int64_t>& ids) const override {
    if (auto id = vocab_.find(word)) return ids.push_back(*id);
    auto unk = vocab_.find(unk_);
    if (!unk) throw TokenizerError("[tokenizer] WordLevel: unk token '" + unk_ + "' not in vocab");
    ids.push_back(*unk);
  }
  std::optional<int64_t> token_to_id(const std::string& t) const override { return vocab_.find(t); }
  std::optional<std::string> id_to_token(int64_t id) const override { return vocab_.token(id); }
  int64_t vocab_size() const override { return vocab_.size(); }

 private:
  Vocab vocab_;
  std::string unk_;
};

std::string infer_model_type(const json& j) {
  if (j.contains("merges")) return "BPE";
  if (j.contains("vocab") && j.at("vocab").is_array()) return "Unigram";
  if (j.contains("continuing_subword_prefix") || j.contains("max_input_chars_per_word")) return "WordPiece";
  return "WordLevel";
}

}  // namespace

std::unique_ptr<Model> make_wordlevel(const json& j, const std::string& where) {
  return std::make_unique<WordLevel>(j, where);
}

std::unique_ptr<Model> make_model(const json& j, const std::string& where) {
  if (!j.is_object()) config_fail(where, "expected an object");
  std::string type = j.contains("type") ? get_string(j, where, "type") : infer_model_type(j);
  if (type == "BPE") return make_bpe(j, where);
  if (type == "WordPiece") return make_wordpiece(j, where);
  if (type == "WordLevel") return make_wordlevel(j, where);
  if (type == "Unigram") return make_unigram(j, where);
  config_fail(where + ".type", "unsupported model type '" + type + "'");
}

}  // namespace modula::text
