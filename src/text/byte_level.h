// GPT-2 byte-level helpers: the byte <-> printable code point map and the GPT-2 word regex.
#pragma once

#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace modula::text {

// GPT-2 bytes_to_unicode(): printable Latin-1 bytes map to themselves, the rest to U+0100...
char32_t byte_to_char(unsigned char b);
// Inverse of byte_to_char; -1 for code points outside the map.
int char_to_byte(char32_t c);

// Every byte of text replaced by its mapped code point (UTF-8 encoded).
std::string bytes_to_chars(std::string_view text);
// Inverse of bytes_to_chars. false when text holds a code point outside the map.
bool chars_to_bytes(std::string_view text, std::string& bytes);

// Byte ranges matched by the GPT-2 pattern
//   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
// evaluated by hand over code points (leftmost alternative wins, as in Oniguruma).
std::vector<std::pair<size_t, size_t>> gpt2_matches(std::string_view text);

}  // namespace modula::text
