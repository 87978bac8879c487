#include "text/decoders.h"

#include <cctype>

#include "text/byte_level.h"
#include "text/split.h"
#include "text/unicode.h"

namespace modula::text {
namespace {

// Rust str::replace: every non-overlapping occurrence, left to right.
std::string replace_all(const std::string& s, const std::string& from, const std::string& to) {
  if (from.empty()) return s;
  std::string out;
  size_t prev = 0;
  for (size_t pos = s.find(from); pos != std::string::npos; pos = s.find(from, prev)) {
    out.append(s, prev, pos - prev);
    out += to;
    prev = pos + from.size();
  }
  out.append(s, prev, std::string::npos);
  return out;
}

std::string join(const std::vector<std::string>& tokens) {
  std::string out;
  for (const auto& t : tokens) out += t;
  return out;
}

// HF decoders::byte_level: tokens back to bytes; invalid UTF-8 becomes U+FFFD.
class ByteLevel : public Decoder {
 public:
  std::vector<std::string> decode_chain(std::vector<std::string> tokens) const override {
    std::string bytes, token_bytes;
    for (const auto& t : tokens) bytes += chars_to_bytes(t, token_bytes) ? token_bytes : t;  // unmapped: raw text
    return {unicode::to_valid_utf8(bytes)};
  }
};

class WordPiece : public Decoder {
 public:
  WordPiece(const json& j, const std::string& where)
      : prefix_(get_string_or(j, where, "prefix", "##")), cleanup_(get_bool_or(j, where, "cleanup", true)) {}
  std::vector<std::string> decode_chain(std::vector<std::string> tokens) const override {
    for (size_t i = 0; i < tokens.size(); ++i) {
      std::string& t = tokens[i];
      if (i != 0) {
        if (!prefix_.empty() && t.compare(0, prefix_.size(), prefix_) == 0)
          t.erase(0, prefix_.size());
        else
          t.insert(0, " ");
      }
      if (cleanup_) t = wordpiece_cleanup(std::move(t));  // HF applies cleanup per token
    }
    return tokens;
  }

 private:
  std::string prefix_;
  bool cleanup_;
};

class Metaspace : public Decoder {
 public:
  Metaspace(const json& j, const std::string& where) : replacement_(get_char(j, where, "replacement")) {
    std::string scheme = get_string_or(j, where, "prepend_scheme", "always");
    strip_first_ = scheme != "never" && get_bool_or(j, where, "add_prefix_space", true);
  }
  // HF Metaspace decoder: replacement -> ' ', except in the first token where it is dropped.
  std::vector<std::string> decode_chain(std::vector<std::string> tokens) const override {
    for (size_t i = 0; i < tokens.size(); ++i) {
      std::string out;
      for (size_t k = 0; k < tokens[i].size();) {
        char32_t c = unicode::next_code_point(tokens[i], k);
        if (c != replacement_)
          unicode::append_utf8(out, c);
        else if (!(i == 0 && strip_first_))
          out += ' ';
      }
      tokens[i] = std::move(out);
    }
    return tokens;
  }

 private:
  char32_t replacement_;
  bool strip_first_ = true;
};

class BpeDecoder : public Decoder {
 public:
  explicit BpeDecoder(std::string suffix) : suffix_(std::move(suffix)) {}
  std::vector<std::string> decode_chain(std::vector<std::string> tokens) const override {
    for (size_t i = 0; i < tokens.size(); ++i)
      tokens[i] = replace_all(tokens[i], suffix_, i + 1 == tokens.size() ? "" : " ");
    return tokens;
  }

 private:
  std::string suffix_;
};

// HF ByteFallback: runs of <0xXX> tokens become their UTF-8 text, or one U+FFFD per byte.
class ByteFallback : public Decoder {
 public:
  std::vector<std::string> decode_chain(std::vector<std::string> tokens) const override {
    std::vector<std::string> out;
    std::string bytes;
    size_t byte_count = 0;
    auto flush = [&] {
      if (byte_count == 0) return;
      if (unicode::is_valid_utf8(bytes))
        out.push_back(bytes);
      else
        for (size_t k = 0; k < byte_count; ++k) out.push_back(unicode::to_utf8(unicode::kReplacementChar));
      bytes.clear();
      byte_count = 0;
    };
    for (auto& t : tokens) {
      int b = parse_byte(t);
      if (b >= 0) {
        bytes += static_cast<char>(b);
        ++byte_count;
      } else {
        flush();
        out.push_back(std::move(t));
      }
    }
    flush();
    return out;
  }

 private:
  static int parse_byte(const std::string& t) {
    if (t.size() != 6 || t.compare(0, 3, "<0x") != 0 || t[5] != '>') return -1;
    auto hex = [](char c) { return std::isxdigit(static_cast<unsigned char>(c)) != 0; };
    if (!hex(t[3]) || !hex(t[4])) return -1;
    return std::stoi(t.substr(3, 2), nullptr, 16);
  }
};

class Fuse : public Decoder {
 public:
  std::vector<std::string> decode_chain(std::vector<std::string> tokens) const override { return {join(tokens)}; }
};

// HF Strip decoder: removes up to `start` leading and `stop` trailing `content` chars per token.
class Strip : public Decoder {
 public:
  Strip(const json& j, const std::string& where)
      : content_(get_char(j, where, "content")),
        start_(static_cast<size_t>(std::max<int64_t>(0, get_int_or(j, where, "start", 0)))),
        stop_(static_cast<size_t>(std::max<int64_t>(0, get_int_or(j, where, "stop", 0)))) {}
  std::vector<std::string> decode_chain(std::vector<std::string> tokens) const override {
    for (auto& t : tokens) {
      std::u32string cps;
      for (size_t i = 0; i < t.size();) cps.push_back(unicode::next_code_point(t, i));
      size_t begin = 0, end = cps.size();
      while (begin < start_ && begin < end && cps[begin] == content_) ++begin;
      for (size_t k = 0; k < stop_ && end > begin && cps[end - 1] == content_; ++k) --end;
      std::string out;
      for (size_t i = begin; i < end; ++i) unicode::append_utf8(out, cps[i]);
      t = std::move(out);
    }
    return tokens;
  }

 private:
  char32_t content_;
  size_t start_, stop_;
};

class Replace : public Decoder {
 public:
  Replace(const json& j, const std::string& where)
      : pattern_(require(j, where, "pattern"), where + ".pattern"), content_(get_string(j, where, "content")) {}
  std::vector<std::string> decode_chain(std::vector<std::string> tokens) const override {
    for (auto& t : tokens) {
      std::string out;
      for (const Span& s : pattern_.find(t)) out += s.is_match ? content_ : t.substr(s.begin, s.end - s.begin);
      t = std::move(out);
    }
    return tokens;
  }

 private:
  Pattern pattern_;
  std::string content_;
};

// HF CTC decoder: dedup repeats, drop pad, word delimiter -> ' '.
class Ctc : public Decoder {
 public:
  Ctc(const json& j, const std::string& where)
      : pad_(get_string_or(j, where, "pad_token", "<pad>")),
        delimiter_(get_string_or(j, where, "word_delimiter_token", "|")),
        cleanup_(get_bool_or(j, where, "cleanup", true)) {}
  std::vector<std::string> decode_chain(std::vector<std::string> tokens) const override {
    std::vector<std::string> out;
    for (size_t i = 0; i < tokens.size(); ++i) {
      if (i > 0 && tokens[i] == tokens[i - 1]) continue;
      std::string t = replace_all(tokens[i], pad_, "");
      if (cleanup_) t = replace_all(wordpiece_cleanup(std::move(t)), delimiter_, " ");
      if (!t.empty()) out.push_back(std::move(t));
    }
    return out;
  }

 private:
  std::string pad_, delimiter_;
  bool cleanup_;
};

class Sequence : public Decoder {
 public:
  Sequence(const json& j, const std::string& where) {
    const json& list = require(j, where, "decoders");
    if (!list.is_array()) config_fail(where + ".decoders", "expected an array");
    for (size_t i = 0; i < list.size(); ++i) {
      auto d = make_decoder(list[i], where + ".decoders[" + std::to_string(i) + "]");
      if (d) steps_.push_back(std::move(d));
    }
  }
  std::vector<std::string> decode_chain(std::vector<std::string> tokens) const override {
    for (const auto& d : steps_) tokens = d->decode_chain(std::move(tokens));
    return tokens;
  }

 private:
  std::vector<std::unique_ptr<Decoder>> steps_;
};

}  // namespace

std::string wordpiece_cleanup(std::string text) {
  static const std::pair<const char*, const char*> kRules[] = {
      {" .", "."},   {" ?", "?"},           {" !", "!"},   {" ,", ","},     {" ' ", "'"},   {" n't", "n't"},
      {" 'm", "'m"}, {" do not", " don't"}, {" 's", "'s"}, {" 've", "'ve"}, {" 're", "'re"}};
  for (const auto& [from, to] : kRules) text = replace_all(text, from, to);
  return text;
}

std::unique_ptr<Decoder> make_decoder(const json& j, const std::string& where) {
  if (j.is_null()) return nullptr;
  std::string type = type_of(j, where);
  if (type == "ByteLevel") return std::make_unique<ByteLevel>();
  if (type == "WordPiece") return std::make_unique<WordPiece>(j, where);
  if (type == "Metaspace") return std::make_unique<Metaspace>(j, where);
  if (type == "BPEDecoder") return std::make_unique<BpeDecoder>(get_string_or(j, where, "suffix", "</w>"));
  if (type == "ByteFallback") return std::make_unique<ByteFallback>();
  if (type == "Fuse") return std::make_unique<Fuse>();
  if (type == "Strip") return std::make_unique<Strip>(j, where);
  if (type == "Replace") return std::make_unique<Replace>(j, where);
  if (type == "CTC") return std::make_unique<Ctc>(j, where);
  if (type == "Sequence") return std::make_unique<Sequence>(j, where);
  config_fail(where + ".type", "unsupported decoder type '" + type + "'");
}

}  // namespace modula::text
