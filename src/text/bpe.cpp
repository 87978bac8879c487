// Byte-pair encoding (HF models::bpe): ranked merges applied lowest rank first.
#include <mutex>
#include <queue>

#include "text/models.h"
#include "text/unicode.h"

namespace modula::text {
namespace {

struct PairHash {
  size_t operator()(const std::pair<int64_t, int64_t>& p) const {
    return std::hash<int64_t>()(p.first) * 1000003u ^ std::hash<int64_t>()(p.second);
  }
};

struct MergeInfo {
  int64_t rank;
  int64_t new_id;
};
using MergeMap = std::unordered_map<std::pair<int64_t, int64_t>, MergeInfo, PairHash>;

// A symbol of the word being merged; removed symbols have removed = true (HF Word).
struct Symbol {
  int64_t id;
  long prev, next;
  bool removed = false;
};

struct Candidate {
  int64_t rank;
  size_t pos;
  int64_t new_id;
  // priority_queue pops the largest: lowest rank first, then leftmost position.
  bool operator<(const Candidate& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
};

// HF Word::merge_all: queue of ranked pairs, stale entries skipped when popped.
void merge_all(std::vector<Symbol>& syms, const MergeMap& merges) {
  std::priority_queue<Candidate> queue;
  auto push_pair = [&](size_t left) {
    if (syms[left].next < 0) return;
    auto it = merges.find({syms[left].id, syms[syms[left].next].id});
    if (it != merges.end()) queue.push({it->second.rank, left, it->second.new_id});
  };
  for (size_t i = 0; i + 1 < syms.size(); ++i) push_pair(i);
  while (!queue.empty()) {
    Candidate top = queue.top();
    queue.pop();
    Symbol& left = syms[top.pos];
    if (left.removed || left.next < 0) continue;
    auto it = merges.find({left.id, syms[left.next].id});
    if (it == merges.end() || it->second.new_id != top.new_id) continue;
    Symbol& right = syms[left.next];
    left.id = top.new_id;
    right.removed = true;
    left.next = right.next;
    if (right.next >= 0) syms[right.next].prev = static_cast<long>(top.pos);
    if (left.prev >= 0) push_pair(static_cast<size_t>(left.prev));
    push_pair(top.pos);
  }
}

class Bpe : public Model {
 public:
  Bpe(const json& j, const std::string& where)
      : vocab_(parse_vocab_object(j, where)),
        unk_(get_string_or(j, where, "unk_token", "")),
        prefix_(get_string_or(j, where, "continuing_subword_prefix", "")),
        suffix_(get_string_or(j, where, "end_of_word_suffix", "")),
        fuse_unk_(get_bool_or(j, where, "fuse_unk", false)),
        byte_fallback_(get_bool_or(j, where, "byte_fallback", false)),
        ignore_merges_(get_bool_or(j, where, "ignore_merges", false)) {
    parse_merges(require(j, where, "merges"), where + ".merges");
  }

  void tokenize(const std::string& word, std::vector<int64_t>& ids) const override {
    if (word.empty()) return;
    if (ignore_merges_) {
      if (auto id = vocab_.find(word)) return ids.push_back(*id);
    }
    {
      std::lock_guard<std::mutex> lock(cache_mutex_);
      auto hit = cache_.find(word);
      if (hit != cache_.end()) {
        ids.insert(ids.end(), hit->second.begin(), hit->second.end());
        return;
      }
    }
    std::vector<int64_t> out = merge_word(word);
    ids.insert(ids.end(), out.begin(), out.end());
    std::lock_guard<std::mutex> lock(cache_mutex_);
    if (cache_.size() < kCacheCapacity) cache_.emplace(word, std::move(out));
  }

  std::optional<int64_t> token_to_id(const std::string& t) const override { return vocab_.find(t); }
  std::optional<std::string> id_to_token(int64_t id) const override { return vocab_.token(id); }
  int64_t vocab_size() const override { return vocab_.size(); }

 private:
  static constexpr size_t kCacheCapacity = 10000;  // HF BPE DEFAULT_CACHE_CAPACITY

  void parse_merges(const json& list, const std::string& where) {
    if (!list.is_array()) config_fail(where, "expected an array");
    for (size_t rank = 0; rank < list.size(); ++rank) {
      const json& m = list[rank];
      std::string key = where + "[" + std::to_string(rank) + "]";
      std::string a, b;
      if (m.is_string()) {
        std::string s = m.get<std::string>();
        size_t space = s.find(' ');
        if (space == std::string::npos || s.find(' ', space + 1) != std::string::npos)
          config_fail(key, "expected \"left right\"");
        a = s.substr(0, space);
        b = s.substr(space + 1);
      } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
        a = m[0].get<std::string>();
        b = m[1].get<std::string>();
      } else {
        config_fail(key, "expected \"left right\" or [left, right]");
      }
      add_merge(a, b, static_cast<int64_t>(rank), key);
    }
  }

  void add_merge(const std::string& a, const std::string& b, int64_t rank, const std::string& key) {
    auto a_id = vocab_.find(a), b_id = vocab_.find(b);
    if (!a_id || !b_id) config_fail(key, "merge token not in vocab");
    // HF BpeBuilder: the right part loses continuing_subword_prefix's length.
    std::string merged = a + (b.size() >= prefix_.size() ? b.substr(prefix_.size()) : std::string());
    auto new_id = vocab_.find(merged);
    if (!new_id) config_fail(key, "merged token '" + merged + "' not in vocab");
    merges_.insert_or_assign(std::make_pair(*a_id, *b_id), MergeInfo{rank, *new_id});  // later duplicates win, as in HF
  }

  // HF BPE::merge_word: one symbol per code point (prefix/suffix, byte fallback, unk), then merges.
  std::vector<int64_t> merge_word(const std::string& word) const {
    std::vector<Symbol> syms;
    int64_t pending_unk = -1;  // unk id waiting to be added (fused while unknown chars repeat)
    auto add = [&](int64_t id) {
      long idx = static_cast<long>(syms.size());
      if (!syms.empty()) syms.back().next = idx;
      syms.push_back({id, idx - 1, -1});
    };
    for (size_t i = 0; i < word.size();) {
      size_t begin = i;
      unicode::next_code_point(word, i);
      std::string s = word.substr(begin, i - begin);
      if (begin > 0) s = prefix_ + s;
      if (i == word.size()) s += suffix_;
      if (auto id = vocab_.find(s)) {
        if (pending_unk >= 0) add(pending_unk);
        pending_unk = -1;
        add(*id);
      } else if (byte_fallback_ && add_bytes(s, add)) {
        // HF: byte tokens do not flush a pending unk.
      } else if (!unk_.empty()) {
        auto unk = vocab_.find(unk_);
        if (!unk) throw TokenizerError("[tokenizer] BPE: unk token '" + unk_ + "' not in vocab");
        if (pending_unk >= 0 && !fuse_unk_) add(pending_unk);
        pending_unk = *unk;
      }
    }
    if (pending_unk >= 0) add(pending_unk);
    merge_all(syms, merges_);
    std::vector<int64_t> out;
    for (const Symbol& s : syms)
      if (!s.removed) out.push_back(s.id);
    return out;
  }

  template <typename Add>
  bool add_bytes(const std::string& s, Add& add) const {
    std::vector<int64_t> byte_ids;
    for (unsigned char b : s) {
      auto id = vocab_.find(byte_fallback_token(b));
      if (!id) return false;
      byte_ids.push_back(*id);
    }
    for (int64_t id : byte_ids) add(id);
    return true;
  }

  Vocab vocab_;
  MergeMap merges_;
  std::string unk_, prefix_, suffix_;
  bool fuse_unk_, byte_fallback_, ignore_merges_;
  mutable std::mutex cache_mutex_;
  mutable std::unordered_map<std::string, std::vector<int64_t>> cache_;
};

}  // namespace

std::unique_ptr<Model> make_bpe(const json& j, const std::string& where) { return std::make_unique<Bpe>(j, where); }

}  // namespace modula::text
