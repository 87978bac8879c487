// UTF-8 helpers and Unicode properties (ICU) shared by the tokenizer pipeline.
// All functions taking text expect valid UTF-8 unless stated otherwise; the
// pipeline sanitizes its input once with to_valid_utf8().
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace modula::text::unicode {

constexpr char32_t kReplacementChar = 0xFFFD;

// Decodes the code point starting at byte i of valid UTF-8 text and advances i.
char32_t next_code_point(std::string_view s, size_t& i);
// Number of code points in valid UTF-8 text.
size_t code_point_count(std::string_view s);
void append_utf8(std::string& out, char32_t cp);
std::string to_utf8(char32_t cp);

// Replaces each maximal invalid subsequence by U+FFFD (Rust String::from_utf8_lossy).
std::string to_valid_utf8(std::string_view bytes);
bool is_valid_utf8(std::string_view bytes);

enum class NormalForm { NFC, NFD, NFKC, NFKD };
std::string normalize(std::string_view s, NormalForm form);
// Per-code-point full lowercase without context (Rust char::to_lowercase).
std::string lowercase(std::string_view s);

bool is_whitespace(char32_t c);       // White_Space property (Rust char::is_whitespace, regex \s)
bool is_letter(char32_t c);           // \p{L}
bool is_number(char32_t c);           // \p{N} (Rust char::is_numeric)
bool is_alphanumeric(char32_t c);     // Rust char::is_alphanumeric: Alphabetic or \p{N}
bool is_word_char(char32_t c);        // Rust regex \w: Alphabetic, \p{M}, Nd, Pc, Join_Control
bool is_punctuation(char32_t c);      // \p{P}
bool is_nonspacing_mark(char32_t c);  // Mn
bool is_other(char32_t c);            // \p{C}: Cc, Cf, Cs, Co, Cn

}  // namespace modula::text::unicode
