// The safetensors files' one error path (private to src/io): SafetensorsError
// "[safetensors] <file>: <msg>", and errno as text.
#pragma once

#include <string>
#include <system_error>

#include "modula/io/safetensors.h"

namespace modula::io::detail {

[[noreturn]] inline void fail(const std::string& file, const std::string& msg) {
  throw SafetensorsError("[safetensors] " + file + ": " + msg);
}

inline std::string errno_text(int e) { return std::generic_category().message(e); }

}  // namespace modula::io::detail
