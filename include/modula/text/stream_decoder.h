// Incremental detokenisation for streaming: push ids one at a time and get the text
// that became final. Text is held back while it ends in an incomplete UTF-8 sequence
// (decoded as U+FFFD), so multi-byte characters split across tokens print whole.
//
//   modula::text::StreamDecoder s(*tok);
//   for (id : ids) std::cout << s.push(id);
//   std::cout << s.finish();
#pragma once

#include "modula/text/tokenizer.h"

namespace modula::text {

class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer& tok) : tok_(tok) {}
  std::string push(int64_t id);  // newly final text (may be empty)
  std::string finish();          // whatever is still held back

 private:
  const Tokenizer& tok_;
  std::vector<int64_t> ids_;
  size_t emitted_ = 0;  // bytes of decode(ids_) already returned
};

}  // namespace modula::text
