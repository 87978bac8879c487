#include "text/byte_level.h"

#include <array>
#include <unordered_map>

#include "text/unicode.h"

namespace modula::text {
namespace {

struct ByteMap {
  std::array<char32_t, 256> to_char{};
  std::unordered_map<char32_t, unsigned char> to_byte;

  ByteMap() {
    // GPT-2 encoder.py bytes_to_unicode: '!'..'~', '¡'..'¬', '®'..'ÿ' keep their value.
    auto printable = [](int b) {
      return (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    };
    char32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      to_char[b] = printable(b) ? static_cast<char32_t>(b) : next++;
      to_byte[to_char[b]] = static_cast<unsigned char>(b);
    }
  }
};

const ByteMap& byte_map() {
  static const ByteMap map;
  return map;
}

enum class Class { Letter, Number, Space, Other };

Class classify(char32_t c) {
  if (unicode::is_letter(c)) return Class::Letter;
  if (unicode::is_number(c)) return Class::Number;
  if (unicode::is_whitespace(c)) return Class::Space;
  return Class::Other;
}

// Length (in code points) of the contraction 's 't 're 've 'm 'll 'd at i, or 0.
size_t contraction_length(const std::u32string& cps, size_t i) {
  if (cps[i] != U'\'' || i + 1 >= cps.size()) return 0;
  char32_t a = cps[i + 1];
  if (a == U's' || a == U't' || a == U'm' || a == U'd') return 2;
  if (i + 2 >= cps.size()) return 0;
  char32_t b = cps[i + 2];
  if ((a == U'r' && b == U'e') || (a == U'v' && b == U'e') || (a == U'l' && b == U'l')) return 3;
  return 0;
}

// End of the match at i in code points (i when nothing matches).
size_t gpt2_match_end(const std::u32string& cps, const std::vector<Class>& cls, size_t i) {
  size_t n = cps.size();
  if (size_t len = contraction_length(cps, i)) return i + len;
  // ` ?\p{L}+`, ` ?\p{N}+`, ` ?[^\s\p{L}\p{N}]+`
  size_t j = cps[i] == U' ' ? i + 1 : i;
  if (j < n && cls[j] != Class::Space) {
    Class run = cls[j];
    while (j < n && cls[j] == run) ++j;
    return j;
  }
  if (cls[i] != Class::Space) return i;  // unreachable: every code point has a class
  size_t k = i;
  while (k < n && cls[k] == Class::Space) ++k;
  // `\s+(?!\S)` backs off one space before a non-space; otherwise `\s+`.
  if (k < n && k - i >= 2) return k - 1;
  return k;
}

}  // namespace

char32_t byte_to_char(unsigned char b) { return byte_map().to_char[b]; }

int char_to_byte(char32_t c) {
  const auto& m = byte_map().to_byte;
  auto it = m.find(c);
  return it == m.end() ? -1 : it->second;
}

std::string bytes_to_chars(std::string_view text) {
  std::string out;
  out.reserve(text.size() * 2);
  for (unsigned char b : text) unicode::append_utf8(out, byte_to_char(b));
  return out;
}

bool chars_to_bytes(std::string_view text, std::string& bytes) {
  bytes.clear();
  for (size_t i = 0; i < text.size();) {
    int b = char_to_byte(unicode::next_code_point(text, i));
    if (b < 0) return false;
    bytes += static_cast<char>(b);
  }
  return true;
}

std::vector<std::pair<size_t, size_t>> gpt2_matches(std::string_view text) {
  std::u32string cps;
  std::vector<size_t> offset;  // byte offset of each code point, plus the end
  for (size_t i = 0; i < text.size();) {
    offset.push_back(i);
    cps.push_back(unicode::next_code_point(text, i));
  }
  offset.push_back(text.size());
  std::vector<Class> cls(cps.size());
  for (size_t i = 0; i < cps.size(); ++i) cls[i] = classify(cps[i]);

  std::vector<std::pair<size_t, size_t>> matches;
  for (size_t i = 0; i < cps.size();) {
    size_t end = gpt2_match_end(cps, cls, i);
    if (end == i) {
      ++i;
      continue;
    }
    matches.emplace_back(offset[i], offset[end]);
    i = end;
  }
  return matches;
}

}  // namespace modula::text
