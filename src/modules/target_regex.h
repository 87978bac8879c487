// A user's regular expression over module or parameter names (target_modules,
// exclude_modules, rank_pattern / alpha_pattern keys): ICU syntax, close to the Python `re`
// that PEFT matches with, and a bounded matcher, so that a catastrophically backtracking
// pattern ((.*)*(.*)*zzz) is an error naming it instead of a hang.
//
//   TargetRegex re(".*\\.(q_proj|v_proj)", "target_modules");
//   re.full_match("model.layers.0.self_attn.q_proj");  // true
#pragma once

#include <memory>
#include <string>

namespace modula {

class TargetRegex {
 public:
  // Throws std::invalid_argument "[targets] <what>: invalid regular expression '<pattern>' (…)".
  TargetRegex(const std::string& pattern, const std::string& what);
  ~TargetRegex();
  TargetRegex(TargetRegex&&) noexcept;
  TargetRegex& operator=(TargetRegex&&) noexcept;

  // Whether the whole of `name` matches (Python re.fullmatch). Throws std::invalid_argument
  // naming the pattern when matching needs more than a few milliseconds of backtracking.
  bool full_match(const std::string& name) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace modula
