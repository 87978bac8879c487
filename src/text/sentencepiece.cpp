#include "text/sentencepiece.h"

#include <dlfcn.h>
#include <unistd.h>

#include <cstdlib>

#include "modula/util/fs.h"
#include "text/unicode.h"

namespace modula::text {

namespace {

// The shim: $MODULA_SPM_SHIM, else beside the executable, else where the build put it.
std::string shim_path() {
  if (const char* env = std::getenv("MODULA_SPM_SHIM")) return env;
  std::string beside = fs::join(fs::executable_dir(), "libmodula_spm.so");
  if (fs::is_file(beside)) return beside;
  return MODULA_SPM_SHIM;
}

using Factory = SpmBackend* (*)();

// AddressSanitizer refuses RTLD_DEEPBIND (it would bypass its interceptors), and without it
// libsentencepiece's protobuf 3.14 meets libtorch's 3.21 and aborts: AddressSanitizer builds
// (scripts/test.sh --sanitize, scripts/fuzz.sh) cannot load SentencePiece models.
#if defined(__SANITIZE_ADDRESS__)
#define MODULA_SPM_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define MODULA_SPM_ASAN 1
#endif
#endif

Factory load_factory() {
  static Factory factory = []() -> Factory {
    if (!sentencepiece_available())
      throw TokenizerError(
          "[tokenizer] SentencePiece models cannot be loaded in an AddressSanitizer build (the shim needs "
          "RTLD_DEEPBIND, which AddressSanitizer forbids)");
    std::string path = shim_path();
    void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
    if (!handle) throw TokenizerError(std::string("[tokenizer] cannot load the SentencePiece shim: ") + dlerror());
    auto f = reinterpret_cast<Factory>(dlsym(handle, "modula_spm_create"));
    if (!f) throw TokenizerError("[tokenizer] " + path + ": no modula_spm_create");
    return f;
  }();
  return factory;
}

}  // namespace

bool sentencepiece_available() {
#ifdef MODULA_SPM_ASAN
  return false;
#else
  return true;
#endif
}

SentencePieceTokenizer::SentencePieceTokenizer(const std::string& path) : source_(path), processor_(load_factory()()) {
  auto error = processor_->load(path);
  if (!error.empty()) throw TokenizerError("[tokenizer] " + path + ": not a SentencePiece model (" + error + ")");
}

SentencePieceTokenizer::~SentencePieceTokenizer() = default;

std::vector<int64_t> SentencePieceTokenizer::encode(const std::string& text, bool /*add_special_tokens*/) const {
  std::vector<int> ids;
  auto error = processor_->encode(unicode::to_valid_utf8(text), &ids);
  if (!error.empty()) throw TokenizerError("[tokenizer] " + source_ + ": encode failed (" + error + ")");
  return std::vector<int64_t>(ids.begin(), ids.end());
}

std::string SentencePieceTokenizer::decode(const std::vector<int64_t>& ids, bool /*skip_special_tokens*/) const {
  std::vector<int> narrow;
  narrow.reserve(ids.size());
  for (int64_t id : ids) {
    check_id(id, "decode");
    narrow.push_back(static_cast<int>(id));
  }
  std::string text;
  auto error = processor_->decode(narrow, &text);
  if (!error.empty()) throw TokenizerError("[tokenizer] " + source_ + ": decode failed (" + error + ")");
  return text;
}

int64_t SentencePieceTokenizer::vocab_size() const { return processor_->piece_size(); }

std::optional<int64_t> SentencePieceTokenizer::token_to_id(const std::string& token) const {
  int id = processor_->piece_to_id(token);
  // PieceToId answers unk_id for unknown pieces.
  if (id < 0 || processor_->id_to_piece(id) != token) return std::nullopt;
  return id;
}

std::string SentencePieceTokenizer::id_to_token(int64_t id) const {
  check_id(id, "id_to_token");
  return processor_->id_to_piece(static_cast<int>(id));
}

void SentencePieceTokenizer::check_id(int64_t id, const char* what) const {
  if (id < 0 || id >= vocab_size())
    throw TokenizerError("[tokenizer] " + source_ + ": " + what + ": id " + std::to_string(id) + " out of range [0, " +
                         std::to_string(vocab_size()) + ")");
}

}  // namespace modula::text
