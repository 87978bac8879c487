// libmodula_spm.so: SentencePieceProcessor behind SpmBackend (see spm_backend.h).
#include <sentencepiece_processor.h>

#include "text/spm_backend.h"

namespace modula::text {
namespace {

class Backend : public SpmBackend {
 public:
  std::string load(const std::string& path) override { return status(processor_.Load(path)); }
  std::string encode(const std::string& text, std::vector<int>* ids) const override {
    return status(processor_.Encode(text, ids));
  }
  std::string decode(const std::vector<int>& ids, std::string* text) const override {
    return status(processor_.Decode(ids, text));
  }
  int piece_size() const override { return processor_.GetPieceSize(); }
  int piece_to_id(const std::string& piece) const override { return processor_.PieceToId(piece); }
  std::string id_to_piece(int id) const override { return processor_.IdToPiece(id); }

 private:
  static std::string status(const sentencepiece::util::Status& s) { return s.ok() ? "" : s.ToString(); }
  sentencepiece::SentencePieceProcessor processor_;
};

}  // namespace
}  // namespace modula::text

extern "C" __attribute__((visibility("default"))) modula::text::SpmBackend* modula_spm_create() {
  return new modula::text::Backend();
}
