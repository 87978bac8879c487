#include "text/pre_tokenizers.h"

#include "text/byte_level.h"
#include "text/unicode.h"

namespace modula::text {
namespace {

// HF pre_tokenizers::bert::is_bert_punc: ASCII punctuation or \p{P}.
bool is_bert_punctuation(char32_t c) {
  bool ascii_punct =
      (c >= 0x21 && c <= 0x2F) || (c >= 0x3A && c <= 0x40) || (c >= 0x5B && c <= 0x60) || (c >= 0x7B && c <= 0x7E);
  return ascii_punct || unicode::is_punctuation(c);
}

std::vector<Piece> split_chars(const Piece& p, bool (*pred)(char32_t), SplitBehavior behavior) {
  return split_piece(p, find_char_matches(p.text, pred), behavior);
}

// Applies f to every piece of the list and concatenates the results.
template <typename F>
std::vector<Piece> flat_map(const std::vector<Piece>& pieces, F f) {
  std::vector<Piece> out;
  for (const Piece& p : pieces)
    for (Piece& q : f(p)) out.push_back(std::move(q));
  return out;
}

class ByteLevel : public PreTokenizer {
 public:
  ByteLevel(const json& j, const std::string& where)
      : add_prefix_space_(get_bool_or(j, where, "add_prefix_space", true)),
        use_regex_(get_bool_or(j, where, "use_regex", true)) {}

  std::vector<Piece> pre_tokenize(const Piece& piece) const override {
    if (piece.text.empty()) return {};
    Piece p = piece;
    if (add_prefix_space_ && (p.text.empty() || p.text[0] != ' ')) p.text.insert(0, " ");
    std::vector<Piece> words{p};
    if (use_regex_)
      words = split_piece(p, spans_from_matches(p.text.size(), gpt2_matches(p.text)), SplitBehavior::Isolated);
    for (Piece& w : words) w.text = bytes_to_chars(w.text);
    return words;
  }

 private:
  bool add_prefix_space_, use_regex_;
};

class BertPreTokenizer : public PreTokenizer {
 public:
  std::vector<Piece> pre_tokenize(const Piece& piece) const override {
    auto words = split_chars(piece, unicode::is_whitespace, SplitBehavior::Removed);
    return flat_map(words, [](const Piece& w) { return split_chars(w, is_bert_punctuation, SplitBehavior::Isolated); });
  }
};

// HF Whitespace: keeps the matches of \w+|[^\w\s]+.
class Whitespace : public PreTokenizer {
 public:
  std::vector<Piece> pre_tokenize(const Piece& piece) const override {
    const std::string& t = piece.text;
    std::vector<std::pair<size_t, size_t>> runs;
    int run_kind = -1;  // 0: word chars, 1: other non-space
    for (size_t i = 0; i < t.size();) {
      size_t begin = i;
      char32_t c = unicode::next_code_point(t, i);
      int kind = unicode::is_word_char(c) ? 0 : unicode::is_whitespace(c) ? -1 : 1;
      if (kind >= 0 && kind == run_kind)
        runs.back().second = i;
      else if (kind >= 0)
        runs.emplace_back(begin, i);
      run_kind = kind;
    }
    // HF: split(Invert(regex), Removed) keeps the matches and drops the gaps.
    std::vector<Span> spans = spans_from_matches(t.size(), runs);
    for (Span& s : spans) s.is_match = !s.is_match;
    return split_piece(piece, spans, SplitBehavior::Removed);
  }
};

class WhitespaceSplit : public PreTokenizer {
 public:
  std::vector<Piece> pre_tokenize(const Piece& piece) const override {
    return split_chars(piece, unicode::is_whitespace, SplitBehavior::Removed);
  }
};

enum class PrependScheme { Always, First, Never };

class Metaspace : public PreTokenizer {
 public:
  Metaspace(const json& j, const std::string& where)
      : replacement_(get_char(j, where, "replacement")), split_(get_bool_or(j, where, "split", true)) {
    std::string scheme = get_string_or(j, where, "prepend_scheme", "always");
    if (scheme == "always")
      scheme_ = PrependScheme::Always;
    else if (scheme == "first")
      scheme_ = PrependScheme::First;
    else if (scheme == "never")
      scheme_ = PrependScheme::Never;
    else
      config_fail(where + ".prepend_scheme", "unknown prepend scheme '" + scheme + "'");
    // Older files: add_prefix_space false means never prepend.
    if (!get_bool_or(j, where, "add_prefix_space", true)) scheme_ = PrependScheme::Never;
    replacement_utf8_ = unicode::to_utf8(replacement_);
  }

  std::vector<Piece> pre_tokenize(const Piece& piece) const override {
    Piece p = piece;
    std::string replaced;
    for (char ch : p.text) {
      if (ch == ' ')
        replaced += replacement_utf8_;
      else
        replaced += ch;
    }
    p.text = std::move(replaced);
    bool starts_with_rep = p.text.compare(0, replacement_utf8_.size(), replacement_utf8_) == 0;
    bool prepend = scheme_ == PrependScheme::Always || (scheme_ == PrependScheme::First && p.at_origin);
    if (prepend && !starts_with_rep) p.text.insert(0, replacement_utf8_);
    if (!split_) return p.text.empty() ? std::vector<Piece>{} : std::vector<Piece>{p};
    char32_t rep = replacement_;
    return split_piece(p, find_char_matches(p.text, [rep](char32_t c) { return c == rep; }),
                       SplitBehavior::MergedWithNext);
  }

 private:
  char32_t replacement_;
  std::string replacement_utf8_;
  bool split_;
  PrependScheme scheme_ = PrependScheme::Always;
};

class SplitPreTokenizer : public PreTokenizer {
 public:
  SplitPreTokenizer(const json& j, const std::string& where)
      : pattern_(require(j, where, "pattern"), where + ".pattern"),
        behavior_(parse_split_behavior(j, where)),
        invert_(get_bool_or(j, where, "invert", false)) {}

  std::vector<Piece> pre_tokenize(const Piece& piece) const override {
    std::vector<Span> spans = pattern_.find(piece.text);
    if (invert_)
      for (Span& s : spans) s.is_match = !s.is_match;
    return split_piece(piece, spans, behavior_);
  }

 private:
  Pattern pattern_;
  SplitBehavior behavior_;
  bool invert_;
};

class Digits : public PreTokenizer {
 public:
  explicit Digits(bool individual) : individual_(individual) {}
  std::vector<Piece> pre_tokenize(const Piece& piece) const override {
    return split_chars(piece, unicode::is_number, individual_ ? SplitBehavior::Isolated : SplitBehavior::Contiguous);
  }

 private:
  bool individual_;
};

class Punctuation : public PreTokenizer {
 public:
  explicit Punctuation(SplitBehavior behavior) : behavior_(behavior) {}
  std::vector<Piece> pre_tokenize(const Piece& piece) const override {
    return split_chars(piece, is_bert_punctuation, behavior_);
  }

 private:
  SplitBehavior behavior_;
};

class CharDelimiterSplit : public PreTokenizer {
 public:
  explicit CharDelimiterSplit(char32_t delimiter) : delimiter_(delimiter) {}
  std::vector<Piece> pre_tokenize(const Piece& piece) const override {
    char32_t d = delimiter_;
    return split_piece(piece, find_char_matches(piece.text, [d](char32_t c) { return c == d; }),
                       SplitBehavior::Removed);
  }

 private:
  char32_t delimiter_;
};

class Sequence : public PreTokenizer {
 public:
  Sequence(const json& j, const std::string& where) {
    const json& list = require(j, where, "pretokenizers");
    if (!list.is_array()) config_fail(where + ".pretokenizers", "expected an array");
    for (size_t i = 0; i < list.size(); ++i) {
      auto p = make_pre_tokenizer(list[i], where + ".pretokenizers[" + std::to_string(i) + "]");
      if (p) steps_.push_back(std::move(p));
    }
  }
  std::vector<Piece> pre_tokenize(const Piece& piece) const override {
    std::vector<Piece> pieces{piece};
    for (const auto& step : steps_) pieces = flat_map(pieces, [&](const Piece& p) { return step->pre_tokenize(p); });
    return pieces;
  }

 private:
  std::vector<std::unique_ptr<PreTokenizer>> steps_;
};

}  // namespace

std::unique_ptr<PreTokenizer> make_pre_tokenizer(const json& j, const std::string& where) {
  if (j.is_null()) return nullptr;
  std::string type = type_of(j, where);
  if (type == "ByteLevel") return std::make_unique<ByteLevel>(j, where);
  if (type == "BertPreTokenizer") return std::make_unique<BertPreTokenizer>();
  if (type == "Whitespace") return std::make_unique<Whitespace>();
  if (type == "WhitespaceSplit") return std::make_unique<WhitespaceSplit>();
  if (type == "Metaspace") return std::make_unique<Metaspace>(j, where);
  if (type == "Split") return std::make_unique<SplitPreTokenizer>(j, where);
  if (type == "Digits") return std::make_unique<Digits>(get_bool_or(j, where, "individual_digits", false));
  if (type == "Punctuation") return std::make_unique<Punctuation>(parse_split_behavior(j, where));
  if (type == "CharDelimiterSplit") return std::make_unique<CharDelimiterSplit>(get_char(j, where, "delimiter"));
  if (type == "Sequence") return std::make_unique<Sequence>(j, where);
  config_fail(where + ".type", "unsupported pre_tokenizer type '" + type + "'");
}

}  // namespace modula::text
