#include "text/added_tokens.h"

#include "text/normalizers.h"
#include "text/unicode.h"

namespace modula::text {
namespace {

AddedToken parse_added_token(const json& j, const std::string& where) {
  AddedToken t;
  const json& id = require(j, where, "id");
  if (!id.is_number_integer() || id.get<int64_t>() < 0) config_fail(where + ".id", "expected a non-negative integer");
  t.id = id.get<int64_t>();
  t.content = get_string(j, where, "content");
  t.single_word = get_bool_or(j, where, "single_word", false);
  t.lstrip = get_bool_or(j, where, "lstrip", false);
  t.rstrip = get_bool_or(j, where, "rstrip", false);
  t.normalized = get_bool_or(j, where, "normalized", true);
  t.special = get_bool_or(j, where, "special", false);
  return t;
}

// HF added_vocabulary: ^\w / \w$ / ^\s* / \s*$ (Rust regex, Unicode classes).
bool starts_with_word(std::string_view s) {
  size_t i = 0;
  return !s.empty() && unicode::is_word_char(unicode::next_code_point(s, i));
}

bool ends_with_word(std::string_view s) {
  bool last_is_word = false;
  for (size_t i = 0; i < s.size();) last_is_word = unicode::is_word_char(unicode::next_code_point(s, i));
  return last_is_word;
}

// Byte offset where the trailing whitespace of s begins.
size_t trailing_space_start(std::string_view s) {
  size_t start = 0;
  for (size_t i = 0; i < s.size();) {
    bool space = unicode::is_whitespace(unicode::next_code_point(s, i));
    if (!space) start = i;
  }
  return start;
}

// Byte length of the leading whitespace of s.
size_t leading_space_length(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    size_t at = i;
    if (!unicode::is_whitespace(unicode::next_code_point(s, i))) return at;
  }
  return i;
}

}  // namespace

AddedVocabulary::AddedVocabulary(const json& list, const std::string& where, const Normalizer* normalizer) {
  if (list.is_null()) return;
  if (!list.is_array()) config_fail(where, "expected an array");
  for (size_t i = 0; i < list.size(); ++i) {
    AddedToken t = parse_added_token(list[i], where + "[" + std::to_string(i) + "]");
    if (t.content.empty()) continue;  // HF ignores empty added tokens
    size_t index = tokens_.size();
    by_content_[t.content] = t.id;
    by_id_[t.id] = index;
    if (t.special) special_.insert(t.content);
    MatchSet& set = t.normalized ? normalized_set_ : raw_set_;
    std::string key = t.content;
    if (t.normalized && normalizer) normalizer->normalize(key);
    if (!key.empty()) {
      set.trie.insert(key, static_cast<int64_t>(index));
      set.empty = false;
    }
    tokens_.push_back(std::move(t));
  }
}

std::optional<int64_t> AddedVocabulary::token_to_id(const std::string& token) const {
  auto it = by_content_.find(token);
  if (it == by_content_.end()) return std::nullopt;
  return it->second;
}

const AddedToken* AddedVocabulary::find(int64_t id) const {
  auto it = by_id_.find(id);
  return it == by_id_.end() ? nullptr : &tokens_[it->second];
}

// HF AddedVocabulary::find_matches: leftmost-longest matches with single_word/lstrip/rstrip.
std::vector<Segment> AddedVocabulary::split(const Piece& piece, const MatchSet& set) const {
  const std::string& s = piece.text;
  if (set.empty) return {Segment{piece, std::nullopt}};
  std::vector<Segment> out;
  auto emit = [&](size_t begin, size_t end, std::optional<int64_t> id) {
    if (end > begin) out.push_back({{s.substr(begin, end - begin), piece.at_origin && begin == 0}, id});
  };
  size_t emitted = 0;  // end of the last emitted segment
  for (size_t pos = 0; pos < s.size();) {
    size_t len = 0;
    int64_t index = -1;
    set.trie.for_each_prefix(s, pos, [&](size_t l, int64_t v) { len = l, index = v; });
    if (index < 0) {
      ++pos;
      continue;
    }
    const AddedToken& tok = tokens_[static_cast<size_t>(index)];
    size_t start = pos, stop = pos + len;
    pos = stop;  // a discarded match still consumes its text (aho-corasick find_iter)
    if (tok.single_word) {
      bool start_ok = start == 0 || !ends_with_word(std::string_view(s).substr(0, start));
      bool stop_ok = stop == s.size() || !starts_with_word(std::string_view(s).substr(stop));
      if (!start_ok || !stop_ok) continue;
    }
    if (tok.lstrip) start = std::max(trailing_space_start(std::string_view(s).substr(0, start)), emitted);
    if (tok.rstrip) stop += leading_space_length(std::string_view(s).substr(stop));
    emit(emitted, start, std::nullopt);
    emit(start, stop, tok.id);
    emitted = stop;
    pos = stop;
  }
  emit(emitted, s.size(), std::nullopt);
  return out;
}

std::vector<Segment> AddedVocabulary::extract_and_normalize(const std::string& text,
                                                            const Normalizer* normalizer) const {
  std::vector<Segment> out;
  for (Segment& seg : split(Piece{text, true}, raw_set_)) {
    if (seg.id) {
      out.push_back(std::move(seg));
      continue;
    }
    if (normalizer) normalizer->normalize(seg.piece.text);
    if (seg.piece.text.empty()) continue;
    for (Segment& sub : split(seg.piece, normalized_set_)) out.push_back(std::move(sub));
  }
  return out;
}

}  // namespace modula::text
