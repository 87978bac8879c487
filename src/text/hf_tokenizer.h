// A Hugging Face tokenizer.json pipeline: added tokens -> normalizer -> pre-tokenizer
// -> model -> post-processor; decoding through the decoder.
#pragma once

#include <memory>
#include <string>

#include "modula/text/tokenizer.h"
#include "text/added_tokens.h"
#include "text/decoders.h"
#include "text/models.h"
#include "text/normalizers.h"
#include "text/post_processor.h"
#include "text/pre_tokenizers.h"

namespace modula::text {

class HfTokenizer : public Tokenizer {
 public:
  // config: the parsed tokenizer.json; source: its path, used in error messages.
  // Throws ConfigError naming the offending key.
  HfTokenizer(const json& config, std::string source);

  std::vector<int64_t> encode(const std::string& text, bool add_special_tokens = true) const override;
  std::string decode(const std::vector<int64_t>& ids, bool skip_special_tokens = true) const override;
  int64_t vocab_size() const override;
  std::optional<int64_t> token_to_id(const std::string& token) const override;
  std::string id_to_token(int64_t id) const override;

 private:
  std::optional<std::string> find_token(int64_t id) const;

  std::string source_;
  std::unique_ptr<Normalizer> normalizer_;
  std::unique_ptr<PreTokenizer> pre_tokenizer_;
  std::unique_ptr<Model> model_;
  std::unique_ptr<PostProcessor> post_processor_;
  std::unique_ptr<Decoder> decoder_;
  AddedVocabulary added_;
};

}  // namespace modula::text
