// tokenizer.json "post_processor": adds special tokens around a single encoded sequence.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "text/errors.h"

namespace modula::text {

class PostProcessor {
 public:
  virtual ~PostProcessor() = default;
  // Wraps the ids of one sequence (called only when add_special_tokens is true).
  virtual std::vector<int64_t> process(std::vector<int64_t> ids) const = 0;
};

// nullptr for JSON null.
std::unique_ptr<PostProcessor> make_post_processor(const json& j, const std::string& where);

}  // namespace modula::text
