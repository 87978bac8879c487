#include "text/normalizers.h"

#include <functional>
#include <vector>

#include "text/byte_level.h"
#include "text/split.h"
#include "text/unicode.h"

namespace modula::text {
namespace {

// Rebuilds text code point by code point; f appends the replacement of c (possibly nothing).
std::string map_chars(const std::string& text, const std::function<void(char32_t, std::string&)>& f) {
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size();) f(unicode::next_code_point(text, i), out);
  return out;
}

class UnicodeNormalizer : public Normalizer {
 public:
  explicit UnicodeNormalizer(unicode::NormalForm form) : form_(form) {}
  void normalize(std::string& text) const override { text = unicode::normalize(text, form_); }

 private:
  unicode::NormalForm form_;
};

class Lowercase : public Normalizer {
 public:
  void normalize(std::string& text) const override { text = unicode::lowercase(text); }
};

// HF StripAccents: drops nonspacing marks (meant to follow NFD/NFKD).
class StripAccents : public Normalizer {
 public:
  void normalize(std::string& text) const override {
    text = map_chars(text, [](char32_t c, std::string& out) {
      if (!unicode::is_nonspacing_mark(c)) unicode::append_utf8(out, c);
    });
  }
};

// HF Strip: trims White_Space code points on the chosen sides.
class Strip : public Normalizer {
 public:
  Strip(bool left, bool right) : left_(left), right_(right) {}
  void normalize(std::string& text) const override {
    size_t begin = 0, end = 0;  // [begin, end): from the first to past the last kept code point
    bool seen_text = false;
    for (size_t i = 0; i < text.size();) {
      bool space = unicode::is_whitespace(unicode::next_code_point(text, i));
      if (!seen_text && space && left_) begin = i;
      if (!space || !right_) end = i;
      seen_text = seen_text || !space;
    }
    text = end > begin ? text.substr(begin, end - begin) : std::string();
  }

 private:
  bool left_, right_;
};

class Replace : public Normalizer {
 public:
  Replace(const json& j, const std::string& where)
      : pattern_(require(j, where, "pattern"), where + ".pattern"), content_(get_string(j, where, "content")) {}
  void normalize(std::string& text) const override {
    std::string out;
    for (const Span& s : pattern_.find(text)) {
      if (s.is_match)
        out += content_;
      else
        out.append(text, s.begin, s.end - s.begin);
    }
    text = std::move(out);
  }

 private:
  Pattern pattern_;
  std::string content_;
};

// HF Prepend: only non-empty text gets the prefix.
class Prepend : public Normalizer {
 public:
  explicit Prepend(std::string prefix) : prefix_(std::move(prefix)) {}
  void normalize(std::string& text) const override {
    if (!text.empty()) text = prefix_ + text;
  }

 private:
  std::string prefix_;
};

// HF normalizers::bert::is_chinese_char: CJK Unified Ideograph blocks.
bool is_chinese_char(char32_t c) {
  return (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0x3400 && c <= 0x4DBF) || (c >= 0x20000 && c <= 0x2A6DF) ||
         (c >= 0x2A700 && c <= 0x2B73F) || (c >= 0x2B740 && c <= 0x2B81F) || (c >= 0x2B920 && c <= 0x2CEAF) ||
         (c >= 0xF900 && c <= 0xFAFF) || (c >= 0x2F800 && c <= 0x2FA1F);
}

class BertNormalizer : public Normalizer {
 public:
  BertNormalizer(const json& j, const std::string& where)
      : clean_text_(get_bool_or(j, where, "clean_text", true)),
        chinese_chars_(get_bool_or(j, where, "handle_chinese_chars", true)),
        lowercase_(get_bool_or(j, where, "lowercase", true)),
        // HF BertNormalizer: strip_accents null follows lowercase.
        strip_accents_(get_bool_or(j, where, "strip_accents", lowercase_)) {}

  void normalize(std::string& text) const override {
    if (clean_text_) text = map_chars(text, clean_char);
    if (chinese_chars_) text = map_chars(text, pad_chinese);
    if (strip_accents_) {
      text = unicode::normalize(text, unicode::NormalForm::NFD);
      StripAccents().normalize(text);
    }
    if (lowercase_) text = unicode::lowercase(text);
  }

 private:
  // HF BertNormalizer clean_text: NUL, U+FFFD and controls removed; whitespace -> ' '.
  static void clean_char(char32_t c, std::string& out) {
    bool is_ws = c == '\t' || c == '\n' || c == '\r' || unicode::is_whitespace(c);
    if (c == 0 || c == 0xFFFD || (!is_ws && unicode::is_other(c))) return;
    unicode::append_utf8(out, is_ws ? U' ' : c);
  }
  static void pad_chinese(char32_t c, std::string& out) {
    if (!is_chinese_char(c)) return unicode::append_utf8(out, c);
    out += ' ';
    unicode::append_utf8(out, c);
    out += ' ';
  }

  bool clean_text_, chinese_chars_, lowercase_, strip_accents_;
};

class ByteLevelNormalizer : public Normalizer {
 public:
  void normalize(std::string& text) const override { text = bytes_to_chars(text); }
};

class Sequence : public Normalizer {
 public:
  Sequence(const json& j, const std::string& where) {
    const json& list = require(j, where, "normalizers");
    if (!list.is_array()) config_fail(where + ".normalizers", "expected an array");
    for (size_t i = 0; i < list.size(); ++i) {
      auto n = make_normalizer(list[i], where + ".normalizers[" + std::to_string(i) + "]");
      if (n) steps_.push_back(std::move(n));
    }
  }
  void normalize(std::string& text) const override {
    for (const auto& n : steps_) n->normalize(text);
  }

 private:
  std::vector<std::unique_ptr<Normalizer>> steps_;
};

}  // namespace

std::unique_ptr<Normalizer> make_normalizer(const json& j, const std::string& where) {
  if (j.is_null()) return nullptr;
  std::string type = type_of(j, where);
  if (type == "NFC") return std::make_unique<UnicodeNormalizer>(unicode::NormalForm::NFC);
  if (type == "NFD") return std::make_unique<UnicodeNormalizer>(unicode::NormalForm::NFD);
  if (type == "NFKC") return std::make_unique<UnicodeNormalizer>(unicode::NormalForm::NFKC);
  if (type == "NFKD") return std::make_unique<UnicodeNormalizer>(unicode::NormalForm::NFKD);
  if (type == "Lowercase") return std::make_unique<Lowercase>();
  if (type == "StripAccents") return std::make_unique<StripAccents>();
  if (type == "Strip")
    return std::make_unique<Strip>(get_bool_or(j, where, "strip_left", true),
                                   get_bool_or(j, where, "strip_right", true));
  if (type == "Replace") return std::make_unique<Replace>(j, where);
  if (type == "Prepend") return std::make_unique<Prepend>(get_string(j, where, "prepend"));
  if (type == "BertNormalizer") return std::make_unique<BertNormalizer>(j, where);
  if (type == "ByteLevel") return std::make_unique<ByteLevelNormalizer>();
  if (type == "Sequence") return std::make_unique<Sequence>(j, where);
  config_fail(where + ".type", "unsupported normalizer type '" + type + "'");
}

}  // namespace modula::text
