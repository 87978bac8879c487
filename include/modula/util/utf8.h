// UTF-8 well-formedness (no torch, no ICU): the tokenizers sanitize text with it, the
// readers of configs refuse text that is not UTF-8 (JSON cannot hold it).
#pragma once

#include <cstddef>
#include <string_view>

namespace modula::utf8 {

// Length (1-4) of the well-formed sequence at s[i], or -(bytes of its maximal invalid
// prefix). Ranges from the Unicode standard, Table 3-7 (well-formed UTF-8 byte sequences).
int sequence_length(std::string_view s, size_t i);
// Offset of the first byte that is not part of well-formed UTF-8, or npos.
size_t first_invalid(std::string_view s);

}  // namespace modula::utf8
