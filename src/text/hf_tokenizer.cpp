#include "text/hf_tokenizer.h"

#include "text/unicode.h"

namespace modula::text {
namespace {

const json& section(const json& config, const char* name) {
  static const json null_value;
  if (!config.contains(name)) return null_value;
  return config.at(name);
}

}  // namespace

HfTokenizer::HfTokenizer(const json& config, std::string source) : source_(std::move(source)) {
  if (!config.is_object()) config_fail("(root)", "expected a JSON object");
  normalizer_ = make_normalizer(section(config, "normalizer"), "normalizer");
  pre_tokenizer_ = make_pre_tokenizer(section(config, "pre_tokenizer"), "pre_tokenizer");
  model_ = make_model(require(config, "(root)", "model"), "model");
  post_processor_ = make_post_processor(section(config, "post_processor"), "post_processor");
  decoder_ = make_decoder(section(config, "decoder"), "decoder");
  added_ = AddedVocabulary(section(config, "added_tokens"), "added_tokens", normalizer_.get());
}

std::vector<int64_t> HfTokenizer::encode(const std::string& text, bool add_special_tokens) const {
  std::vector<int64_t> ids;
  std::string input = unicode::to_valid_utf8(text);
  for (const Segment& seg : added_.extract_and_normalize(input, normalizer_.get())) {
    if (seg.id) {
      ids.push_back(*seg.id);
      continue;
    }
    if (!pre_tokenizer_) {
      model_->tokenize(seg.piece.text, ids);
      continue;
    }
    for (const Piece& word : pre_tokenizer_->pre_tokenize(seg.piece))
      if (!word.text.empty()) model_->tokenize(word.text, ids);
  }
  if (add_special_tokens && post_processor_) ids = post_processor_->process(std::move(ids));
  return ids;
}

std::string HfTokenizer::decode(const std::vector<int64_t>& ids, bool skip_special_tokens) const {
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (int64_t id : ids) {
    std::optional<std::string> token = find_token(id);
    if (!token)
      throw TokenizerError("[tokenizer] " + source_ + ": decode: id " + std::to_string(id) + " out of range [0, " +
                           std::to_string(vocab_size()) + ")");
    if (skip_special_tokens && added_.is_special(*token)) continue;
    tokens.push_back(std::move(*token));
  }
  if (!decoder_) {
    // HF Tokenizer::decode without a decoder joins tokens with spaces.
    std::string out;
    for (size_t i = 0; i < tokens.size(); ++i) out += (i ? " " : "") + tokens[i];
    return out;
  }
  std::string out;
  for (const std::string& piece : decoder_->decode_chain(std::move(tokens))) out += piece;
  return out;
}

int64_t HfTokenizer::vocab_size() const {
  int64_t size = model_->vocab_size();
  for (const AddedToken& t : added_.tokens())
    if (!model_->id_to_token(t.id)) ++size;  // added tokens the model does not know
  return size;
}

std::optional<int64_t> HfTokenizer::token_to_id(const std::string& token) const {
  if (auto id = added_.token_to_id(token)) return id;
  return model_->token_to_id(token);
}

std::optional<std::string> HfTokenizer::find_token(int64_t id) const {
  if (const AddedToken* t = added_.find(id)) return t->content;
  return model_->id_to_token(id);
}

std::string HfTokenizer::id_to_token(int64_t id) const {
  if (auto token = find_token(id)) return *token;
  throw TokenizerError("[tokenizer] " + source_ + ": id_to_token: id " + std::to_string(id) + " out of range");
}

}  // namespace modula::text
