// A SentencePiece .model file through libsentencepiece (loaded via the shim, spm_backend.h).
#pragma once

#include <memory>
#include <string>

#include "modula/text/tokenizer.h"
#include "text/spm_backend.h"

namespace modula::text {

class SentencePieceTokenizer : public Tokenizer {
 public:
  // Throws TokenizerError naming path when the model cannot be loaded.
  explicit SentencePieceTokenizer(const std::string& path);
  ~SentencePieceTokenizer() override;

  // Never adds BOS/EOS: matches HF's reference for a bare .model (tests/fixtures/hf/tokenizers).
  std::vector<int64_t> encode(const std::string& text, bool add_special_tokens = true) const override;
  // Control pieces (<s>, </s>, padding) always decode to nothing, as in libsentencepiece.
  std::string decode(const std::vector<int64_t>& ids, bool skip_special_tokens = true) const override;
  int64_t vocab_size() const override;
  std::optional<int64_t> token_to_id(const std::string& token) const override;
  std::string id_to_token(int64_t id) const override;

 private:
  void check_id(int64_t id, const char* what) const;

  std::string source_;
  std::unique_ptr<SpmBackend> processor_;
};

}  // namespace modula::text
