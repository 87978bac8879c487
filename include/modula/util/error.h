// The one error-check helper of the tree (no torch). Messages start with the component:
// throw_error("lora", "r must be positive") throws std::invalid_argument("[lora] r must be
// positive"). A file names its component once, in a constant named after the file
// (`constexpr std::string_view kLoraBankTag = "lora bank";` in lora_bank.cpp: files of a
// library may share one unity-build translation unit), and throws through these helpers
// instead of a local bad()/fail().
//
//   check(r > 0, kLoraTag, "r must be positive");           // eager message: not for hot paths
//   if (x.dim() != 2) throw_error(kLoraTag, "x must be 2-D");
//   throw_error<std::runtime_error>(kLoraTag, file + ": truncated");  // another exception type
#pragma once

#include <stdexcept>
#include <string>
#include <string_view>

namespace modula {

// A bad configuration value (HF config.json, training config, module config, tokenizer
// entry); what() names the component, the source and the key.
struct ConfigError : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};

// "[tag] msg".
inline std::string tagged(std::string_view tag, const std::string& msg) {
  std::string out;
  out.reserve(tag.size() + msg.size() + 3);
  out.append("[").append(tag).append("] ").append(msg);
  return out;
}

// Throws E("[tag] msg"); E is std::invalid_argument unless the caller's contract says otherwise.
template <typename E = std::invalid_argument>
[[noreturn]] void throw_error(std::string_view tag, const std::string& msg) {
  throw E(tagged(tag, msg));
}

// throw_error(tag, msg) unless ok.
template <typename E = std::invalid_argument>
void check(bool ok, std::string_view tag, const std::string& msg) {
  if (!ok) throw_error<E>(tag, msg);
}

}  // namespace modula
