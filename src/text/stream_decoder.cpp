#include "modula/text/stream_decoder.h"

namespace modula::text {
namespace {

bool ends_incomplete(const std::string& s) {
  static const std::string replacement = "\xEF\xBF\xBD";
  return s.size() >= 3 && s.compare(s.size() - 3, 3, replacement) == 0;
}

}  // namespace

std::string StreamDecoder::push(int64_t id) {
  ids_.push_back(id);
  std::string text = tok_.decode(ids_);
  if (ends_incomplete(text) || text.size() < emitted_) return "";
  // Decoders may rewrite earlier text (e.g. cleanup of " ."); emit only a stable suffix.
  std::string out = text.substr(emitted_);
  emitted_ = text.size();
  return out;
}

std::string StreamDecoder::finish() {
  std::string text = tok_.decode(ids_);
  std::string out = text.size() > emitted_ ? text.substr(emitted_) : "";
  emitted_ = text.size();
  return out;
}

}  // namespace modula::text
