#include "text/split.h"

#include <unicode/regex.h>
#include <unicode/unistr.h>

#include "text/unicode.h"

namespace modula::text {

SplitBehavior parse_split_behavior(const json& j, const std::string& where) {
  std::string name = get_string_or(j, where, "behavior", "Isolated");
  // Serialized names are PascalCase; older files used snake_case.
  if (name == "Removed" || name == "removed") return SplitBehavior::Removed;
  if (name == "Isolated" || name == "isolated") return SplitBehavior::Isolated;
  if (name == "MergedWithPrevious" || name == "merged_with_previous") return SplitBehavior::MergedWithPrevious;
  if (name == "MergedWithNext" || name == "merged_with_next") return SplitBehavior::MergedWithNext;
  if (name == "Contiguous" || name == "contiguous") return SplitBehavior::Contiguous;
  config_fail(where + ".behavior", "unknown split behavior '" + name + "'");
}

std::vector<Span> spans_from_matches(size_t len, const std::vector<std::pair<size_t, size_t>>& matches) {
  std::vector<Span> spans;
  size_t prev = 0;
  for (const auto& [begin, end] : matches) {
    if (prev != begin) spans.push_back({prev, begin, false});
    spans.push_back({begin, end, true});
    prev = end;
  }
  if (prev != len) spans.push_back({prev, len, false});
  return spans;
}

std::vector<Span> find_char_matches(std::string_view text, const std::function<bool(char32_t)>& pred) {
  std::vector<Span> spans;
  size_t last = 0;
  for (size_t i = 0; i < text.size();) {
    size_t begin = i;
    char32_t c = unicode::next_code_point(text, i);
    if (!pred(c)) continue;
    if (last < begin) spans.push_back({last, begin, false});
    spans.push_back({begin, i, true});
    last = i;
  }
  if (last < text.size()) spans.push_back({last, text.size(), false});
  return spans;
}

std::vector<Span> find_literal_matches(std::string_view text, const std::string& literal) {
  std::vector<std::pair<size_t, size_t>> matches;
  if (!literal.empty()) {
    for (size_t pos = text.find(literal); pos != std::string_view::npos; pos = text.find(literal, pos)) {
      matches.emplace_back(pos, pos + literal.size());
      pos += literal.size();
    }
  }
  return spans_from_matches(text.size(), matches);
}

namespace {

// HF NormalizedString::split: which spans survive and how delimiters merge with neighbours.
std::vector<Span> apply_behavior(const std::vector<Span>& spans, SplitBehavior behavior) {
  std::vector<Span> out;
  bool previous_match = false;
  switch (behavior) {
    case SplitBehavior::Isolated:
      return spans;
    case SplitBehavior::Removed:
      for (const Span& s : spans)
        if (!s.is_match) out.push_back(s);
      return out;
    case SplitBehavior::Contiguous:
      for (const Span& s : spans) {
        if (s.is_match == previous_match && !out.empty())
          out.back().end = s.end;
        else
          out.push_back(s);
        previous_match = s.is_match;
      }
      return out;
    case SplitBehavior::MergedWithPrevious:
      for (const Span& s : spans) {
        if (s.is_match && !previous_match && !out.empty())
          out.back().end = s.end;
        else
          out.push_back(s);
        previous_match = s.is_match;
      }
      return out;
    case SplitBehavior::MergedWithNext:
      for (auto it = spans.rbegin(); it != spans.rend(); ++it) {
        if (it->is_match && !previous_match && !out.empty())
          out.back().begin = it->begin;
        else
          out.push_back(*it);
        previous_match = it->is_match;
      }
      return std::vector<Span>(out.rbegin(), out.rend());
  }
  return out;
}

}  // namespace

std::vector<Piece> split_piece(const Piece& piece, std::vector<Span> spans, SplitBehavior behavior) {
  std::vector<Piece> out;
  for (const Span& s : apply_behavior(spans, behavior)) {
    if (s.end <= s.begin) continue;
    out.push_back({piece.text.substr(s.begin, s.end - s.begin), piece.at_origin && s.begin == 0});
  }
  return out;
}

namespace {

// Oniguruma's \s / \S (used by HF) are the White_Space property; ICU's \s is [\t\n\f\r\p{Z}],
// which misses U+000B and U+0085. Rewrite them; other escapes pass through untouched.
std::string onig_to_icu(const std::string& pattern) {
  std::string out;
  for (size_t i = 0; i < pattern.size(); ++i) {
    if (pattern[i] != '\\' || i + 1 == pattern.size()) {
      out += pattern[i];
      continue;
    }
    char next = pattern[++i];
    if (next == 's')
      out += "\\p{White_Space}";
    else if (next == 'S')
      out += "\\P{White_Space}";
    else
      out += {'\\', next};
  }
  return out;
}

}  // namespace

struct Regex::Impl {
  std::unique_ptr<icu::RegexPattern> pattern;
  std::string source;  // "'<pattern>' (<where>)" for errors
};

namespace {

// The matcher's work budget in ICU time units (~10,000 engine steps each) for a text of
// `length` UTF-16 units: linear in the text, so legitimate patterns (tens of steps per
// character) never reach it, while catastrophic backtracking ((a+)+$) stops in milliseconds.
int32_t split_time_limit(int32_t length) { return 100 + length / 4; }
constexpr int32_t kSplitStackLimitKb = 64 * 1024;  // the backtracking stack (heap), per matcher

}  // namespace

Regex::Regex(const std::string& pattern, const std::string& where) : impl_(std::make_unique<Impl>()) {
  UErrorCode status = U_ZERO_ERROR;
  UParseError parse_error{};
  icu::UnicodeString upattern = icu::UnicodeString::fromUTF8(onig_to_icu(pattern));
  impl_->source = "'" + pattern + "' (" + where + ")";
  impl_->pattern.reset(icu::RegexPattern::compile(upattern, 0, parse_error, status));
  if (U_FAILURE(status) || !impl_->pattern)
    config_fail(where, "invalid regex '" + pattern + "' (" + u_errorName(status) + ")");
}

Regex::~Regex() = default;

std::vector<std::pair<size_t, size_t>> Regex::find_all(std::string_view text) const {
  icu::UnicodeString utext =
      icu::UnicodeString::fromUTF8(icu::StringPiece(text.data(), static_cast<int32_t>(text.size())));
  // byte_at[k]: byte offset of UTF-16 index k.
  std::vector<size_t> byte_at;
  byte_at.reserve(static_cast<size_t>(utext.length()) + 1);
  for (size_t i = 0; i < text.size();) {
    size_t begin = i;
    char32_t c = unicode::next_code_point(text, i);
    byte_at.push_back(begin);
    if (c > 0xFFFF) byte_at.push_back(begin);
  }
  byte_at.push_back(text.size());

  std::vector<std::pair<size_t, size_t>> matches;
  UErrorCode status = U_ZERO_ERROR;
  std::unique_ptr<icu::RegexMatcher> matcher(impl_->pattern->matcher(utext, status));
  if (U_FAILURE(status)) throw TokenizerError("[tokenizer] regex matcher failed for " + impl_->source);
  matcher->setTimeLimit(split_time_limit(utext.length()), status);
  matcher->setStackLimit(kSplitStackLimitKb, status);
  while (matcher->find(status) && U_SUCCESS(status)) {
    int32_t b = matcher->start(status), e = matcher->end(status);
    matches.emplace_back(byte_at[static_cast<size_t>(b)], byte_at[static_cast<size_t>(e)]);
  }
  if (status == U_REGEX_TIME_OUT || status == U_REGEX_STACK_OVERFLOW)
    throw TokenizerError("[tokenizer] regex " + impl_->source + " gave up on a text of " + std::to_string(text.size()) +
                         " bytes (" + u_errorName(status) +
                         "): the pattern backtracks catastrophically, e.g. nested quantifiers like (a+)+");
  if (U_FAILURE(status)) throw TokenizerError("[tokenizer] regex " + impl_->source + " failed: " + u_errorName(status));
  return matches;
}

Pattern::Pattern(const json& j, const std::string& where) {
  if (j.is_object() && j.contains("String")) {
    literal_ = get_string(j, where, "String");
  } else if (j.is_object() && j.contains("Regex")) {
    regex_ = std::make_unique<Regex>(get_string(j, where, "Regex"), where + ".Regex");
  } else {
    config_fail(where, "expected {\"String\": ...} or {\"Regex\": ...}");
  }
}

std::vector<Span> Pattern::find(std::string_view text) const {
  if (regex_) return spans_from_matches(text.size(), regex_->find_all(text));
  return find_literal_matches(text, literal_);
}

}  // namespace modula::text
