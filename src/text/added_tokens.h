// tokenizer.json "added_tokens": tokens matched verbatim in the input before the
// model runs (HF AddedVocabulary), e.g. <|endoftext|>, [CLS].
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "text/errors.h"
#include "text/split.h"
#include "text/trie.h"

namespace modula::text {

class Normalizer;

struct AddedToken {
  int64_t id = 0;
  std::string content;
  bool single_word = false;
  bool lstrip = false;
  bool rstrip = false;
  bool normalized = true;
  bool special = false;
};

// A run of input: either an added token (id set) or text still to tokenize.
struct Segment {
  Piece piece;
  std::optional<int64_t> id;
};

class AddedVocabulary {
 public:
  AddedVocabulary() = default;
  // normalizer (may be null) normalizes the content of tokens with normalized = true.
  AddedVocabulary(const json& list, const std::string& where, const Normalizer* normalizer);

  // HF extract_and_normalize: split on non-normalized tokens, normalize the rest, then
  // split on normalized tokens. Text segments come back normalized; empty ones are dropped.
  std::vector<Segment> extract_and_normalize(const std::string& text, const Normalizer* normalizer) const;

  std::optional<int64_t> token_to_id(const std::string& token) const;
  const AddedToken* find(int64_t id) const;
  bool is_special(const std::string& content) const { return special_.count(content) > 0; }
  const std::vector<AddedToken>& tokens() const { return tokens_; }

 private:
  // One automaton: keys are token contents (normalized ones for the normalized set).
  struct MatchSet {
    ByteTrie trie;
    bool empty = true;
  };
  std::vector<Segment> split(const Piece& piece, const MatchSet& set) const;

  std::vector<AddedToken> tokens_;
  std::unordered_map<std::string, int64_t> by_content_;
  std::unordered_map<int64_t, size_t> by_id_;  // id -> index in tokens_
  std::unordered_set<std::string> special_;
  MatchSet raw_set_, normalized_set_;
};

}  // namespace modula::text
