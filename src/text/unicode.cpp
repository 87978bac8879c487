#include "text/unicode.h"

#include <unicode/normalizer2.h>
#include <unicode/uchar.h>
#include <unicode/unistr.h>

#include "modula/util/utf8.h"
#include "text/errors.h"

namespace modula::text::unicode {

char32_t next_code_point(std::string_view s, size_t& i) {
  auto byte = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
  unsigned char b = byte(i);
  if (b < 0x80) {
    ++i;
    return b;
  }
  int extra = b >= 0xF0 ? 3 : b >= 0xE0 ? 2 : 1;
  char32_t cp = b & (0x3F >> extra);
  ++i;
  for (int k = 0; k < extra && i < s.size(); ++k, ++i) cp = (cp << 6) | (byte(i) & 0x3F);
  return cp;
}

size_t code_point_count(std::string_view s) {
  size_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

void append_utf8(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

std::string to_utf8(char32_t cp) {
  std::string out;
  append_utf8(out, cp);
  return out;
}

using utf8::sequence_length;

std::string to_valid_utf8(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  size_t i = 0;
  while (i < bytes.size()) {
    int len = sequence_length(bytes, i);
    if (len > 0) {
      out.append(bytes.substr(i, len));
      i += len;
    } else {
      append_utf8(out, kReplacementChar);
      i += -len;
    }
  }
  return out;
}

bool is_valid_utf8(std::string_view bytes) { return utf8::first_invalid(bytes) == std::string_view::npos; }

std::string normalize(std::string_view s, NormalForm form) {
  UErrorCode status = U_ZERO_ERROR;
  const icu::Normalizer2* norm = nullptr;
  switch (form) {
    case NormalForm::NFC:
      norm = icu::Normalizer2::getNFCInstance(status);
      break;
    case NormalForm::NFD:
      norm = icu::Normalizer2::getNFDInstance(status);
      break;
    case NormalForm::NFKC:
      norm = icu::Normalizer2::getNFKCInstance(status);
      break;
    case NormalForm::NFKD:
      norm = icu::Normalizer2::getNFKDInstance(status);
      break;
  }
  if (U_FAILURE(status) || norm == nullptr) throw TokenizerError("[tokenizer] ICU normalizer unavailable");
  icu::UnicodeString in = icu::UnicodeString::fromUTF8(icu::StringPiece(s.data(), static_cast<int32_t>(s.size())));
  icu::UnicodeString result = norm->normalize(in, status);
  if (U_FAILURE(status)) throw TokenizerError("[tokenizer] ICU normalization failed");
  std::string out;
  result.toUTF8String(out);
  return out;
}

std::string lowercase(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    char32_t c = next_code_point(s, i);
    // SpecialCasing.txt: U+0130 is the only unconditional multi-char lowercase mapping.
    if (c == 0x130) {
      append_utf8(out, U'i');
      append_utf8(out, 0x307);
    } else {
      append_utf8(out, static_cast<char32_t>(u_tolower(static_cast<UChar32>(c))));
    }
  }
  return out;
}

namespace {
uint32_t category_mask(char32_t c) { return U_GET_GC_MASK(static_cast<UChar32>(c)); }
bool has(char32_t c, UProperty p) { return u_hasBinaryProperty(static_cast<UChar32>(c), p); }
}  // namespace

bool is_whitespace(char32_t c) { return has(c, UCHAR_WHITE_SPACE); }
bool is_letter(char32_t c) { return category_mask(c) & U_GC_L_MASK; }
bool is_number(char32_t c) { return category_mask(c) & U_GC_N_MASK; }
bool is_alphanumeric(char32_t c) { return has(c, UCHAR_ALPHABETIC) || is_number(c); }
bool is_word_char(char32_t c) {
  return has(c, UCHAR_ALPHABETIC) || (category_mask(c) & (U_GC_M_MASK | U_GC_ND_MASK | U_GC_PC_MASK)) ||
         has(c, UCHAR_JOIN_CONTROL);
}
bool is_punctuation(char32_t c) { return category_mask(c) & U_GC_P_MASK; }
bool is_nonspacing_mark(char32_t c) { return category_mask(c) & U_GC_MN_MASK; }
bool is_other(char32_t c) { return category_mask(c) & U_GC_C_MASK; }

}  // namespace modula::text::unicode
