// Small string helpers shared across the tree (no torch): one definition each, so that no
// file keeps a private copy.
#pragma once

#include <string>
#include <vector>

namespace modula {

inline bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// "a, b, c" (for messages listing names).
inline std::string joined(const std::vector<std::string>& v, const std::string& sep = ", ") {
  std::string out;
  for (const auto& s : v) out += (out.empty() ? "" : sep) + s;
  return out;
}

// Parameters of attached modules live under "<site>.adapters."; they are not backbone weights.
inline bool is_module_param(const std::string& name) { return name.find(".adapters.") != std::string::npos; }

}  // namespace modula
