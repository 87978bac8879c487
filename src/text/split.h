// Splitting text into pieces: pattern matching (predicate, literal, ICU regex)
// and HF tokenizers' SplitDelimiterBehavior.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "text/errors.h"

namespace modula::text {

// A piece of (normalized) text on its way to the model. at_origin: the piece starts
// at byte 0 of the original input (HF offsets_original().0 == 0, used by Metaspace "first").
struct Piece {
  std::string text;
  bool at_origin = false;
};

// A byte range of a piece's text; is_match marks a pattern match, else the gap between.
struct Span {
  size_t begin = 0;
  size_t end = 0;
  bool is_match = false;
};

enum class SplitBehavior { Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous };

SplitBehavior parse_split_behavior(const json& j, const std::string& where);

// Matches and gaps covering [0, len) from sorted non-overlapping match ranges.
std::vector<Span> spans_from_matches(size_t len, const std::vector<std::pair<size_t, size_t>>& matches);
// Each code point satisfying pred is its own match (HF Pattern for Fn(char) -> bool).
std::vector<Span> find_char_matches(std::string_view text, const std::function<bool(char32_t)>& pred);
// Non-overlapping occurrences of a literal, left to right.
std::vector<Span> find_literal_matches(std::string_view text, const std::string& literal);

// HF NormalizedString::split: applies the behavior and cuts the piece; empty pieces dropped.
std::vector<Piece> split_piece(const Piece& piece, std::vector<Span> spans, SplitBehavior behavior);

// A compiled ICU regular expression (Oniguruma-compatible enough for HF patterns).
class Regex {
 public:
  Regex(const std::string& pattern, const std::string& where);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;
  // Byte ranges of all non-overlapping matches.
  std::vector<std::pair<size_t, size_t>> find_all(std::string_view text) const;

 private:
  struct Impl;  // holds the icu::RegexPattern
  std::unique_ptr<Impl> impl_;
};

// A Split/Replace "pattern": {"String": "..."} or {"Regex": "..."}.
class Pattern {
 public:
  Pattern(const json& j, const std::string& where);
  std::vector<Span> find(std::string_view text) const;

 private:
  std::string literal_;
  std::unique_ptr<Regex> regex_;
};

}  // namespace modula::text
