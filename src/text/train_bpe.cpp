// BPE merge learning (HF models::bpe::BpeTrainer) and the byte-level BPE tokenizer.json.
#include <algorithm>
#include <limits>
#include <queue>
#include <unordered_map>

#include "text/byte_level.h"
#include "text/trainers.h"
#include "text/unicode.h"

namespace modula::text {
namespace {

using PairKey = uint64_t;  // (left id << 32) | right id: orders as the pair (left, right)

PairKey pair_key(int32_t a, int32_t b) { return (static_cast<uint64_t>(a) << 32) | static_cast<uint32_t>(b); }
int32_t left_of(PairKey k) { return static_cast<int32_t>(k >> 32); }
int32_t right_of(PairKey k) { return static_cast<int32_t>(k & 0xFFFFFFFFu); }

// A queue entry; stale counts are refreshed when popped (HF's lazy BinaryHeap of Merge).
struct Candidate {
  int64_t count;
  PairKey pair;
  // Max-heap: highest count first, then the smallest pair.
  bool operator<(const Candidate& o) const { return count != o.count ? count < o.count : pair > o.pair; }
};

class Learner {
 public:
  explicit Learner(const BpeLearnConfig& config) : config_(config) {}

  BpeLearned run(const std::vector<WordCount>& words) {
    for (const std::string& s : config_.special_tokens) add_token(s);
    add_alphabet(words);
    split_words(words);
    count_pairs();
    while (static_cast<int64_t>(learned_.vocab.size()) < config_.vocab_size && !queue_.empty()) {
      Candidate top = queue_.top();
      queue_.pop();
      int64_t current = count_of(top.pair);
      if (top.count != current) {
        if (current > 0) queue_.push({current, top.pair});
        continue;
      }
      if (top.count < 1 || top.count < config_.min_frequency) break;
      merge(top.pair);
    }
    return std::move(learned_);
  }

 private:
  int32_t add_token(const std::string& token) {
    auto [it, fresh] = ids_.try_emplace(token, static_cast<int32_t>(learned_.vocab.size()));
    if (fresh) learned_.vocab.push_back(token);
    return it->second;
  }

  // Characters weighted by word counts, initial alphabet forced, the rarest dropped beyond
  // limit_alphabet, the rest added in code point order.
  void add_alphabet(const std::vector<WordCount>& words) {
    std::unordered_map<char32_t, uint64_t> freq;
    for (const auto& [word, count] : words)
      for (size_t i = 0; i < word.size();) freq[unicode::next_code_point(word, i)] += static_cast<uint64_t>(count);
    for (char32_t c : config_.initial_alphabet) freq[c] = std::numeric_limits<uint64_t>::max();
    std::vector<std::pair<char32_t, uint64_t>> kept(freq.begin(), freq.end());
    auto limit = static_cast<size_t>(config_.limit_alphabet);
    if (limit > 0 && kept.size() > limit) {
      std::sort(kept.begin(), kept.end(), [](const auto& a, const auto& b) {
        return a.second != b.second ? a.second < b.second : a.first > b.first;
      });
      kept.erase(kept.begin(), kept.end() - static_cast<long>(limit));
    }
    std::sort(kept.begin(), kept.end());
    for (const auto& entry : kept) add_token(unicode::to_utf8(entry.first));
  }

  // Words as symbol ids; characters outside the alphabet are dropped (HF tokenize_words).
  void split_words(const std::vector<WordCount>& words) {
    words_.reserve(words.size());
    for (const auto& [word, count] : words) {
      std::vector<int32_t> symbols;
      for (size_t i = 0; i < word.size();) {
        size_t begin = i;
        unicode::next_code_point(word, i);
        std::string s = word.substr(begin, i - begin);
        if (!ids_.count(s)) continue;
        if (begin > 0 && !config_.prefix.empty()) s = config_.prefix + s;
        symbols.push_back(add_token(s));
      }
      words_.push_back(std::move(symbols));
      counts_.push_back(count);
    }
    stamps_.assign(words_.size(), 0);
  }

  void count_pairs() {
    for (size_t w = 0; w < words_.size(); ++w)
      for (size_t i = 0; i + 1 < words_[w].size(); ++i)
        change(pair_key(words_[w][i], words_[w][i + 1]), counts_[w], static_cast<int32_t>(w));
    for (const auto& [pair, count] : pair_counts_)
      if (count > 0) queue_.push({count, pair});
    touched_.clear();
  }

  int64_t count_of(PairKey pair) const {
    auto it = pair_counts_.find(pair);
    return it == pair_counts_.end() ? 0 : it->second;
  }

  // Adds delta occurrences of a pair; a positive change indexes the word under the pair.
  void change(PairKey pair, int64_t delta, int32_t word) {
    pair_counts_[pair] += delta;
    if (delta <= 0) return;
    std::vector<int32_t>& holders = where_[pair];
    if (holders.empty() || holders.back() != word) holders.push_back(word);
    touched_.push_back(pair);
  }

  // Merges the pair in every word that holds it, left to right (HF Word::merge), updating the
  // neighbouring pair counts; only the pairs that gained occurrences are queued again.
  void merge(PairKey pair) {
    int32_t a = left_of(pair), b = right_of(pair);
    std::string right = learned_.vocab[static_cast<size_t>(b)];
    const std::string& prefix = config_.prefix;
    if (!prefix.empty() && right.compare(0, prefix.size(), prefix) == 0) right.erase(0, prefix.size());
    int32_t merged = add_token(learned_.vocab[static_cast<size_t>(a)] + right);
    learned_.merges.emplace_back(learned_.vocab[static_cast<size_t>(a)], learned_.vocab[static_cast<size_t>(b)]);
    ++stamp_;
    std::vector<int32_t> holders = std::move(where_[pair]);
    for (int32_t w : holders) {
      if (stamps_[static_cast<size_t>(w)] == stamp_) continue;
      stamps_[static_cast<size_t>(w)] = stamp_;
      std::vector<int32_t>& s = words_[static_cast<size_t>(w)];
      int64_t n = counts_[static_cast<size_t>(w)];
      for (size_t i = 0; i + 1 < s.size(); ++i) {
        if (s[i] != a || s[i + 1] != b) continue;
        if (i > 0) {
          change(pair_key(s[i - 1], a), -n, w);
          change(pair_key(s[i - 1], merged), n, w);
        }
        if (i + 2 < s.size()) {
          change(pair_key(b, s[i + 2]), -n, w);
          change(pair_key(merged, s[i + 2]), n, w);
        }
        s[i] = merged;
        s.erase(s.begin() + static_cast<long>(i) + 1);
      }
    }
    pair_counts_.erase(pair);
    where_.erase(pair);
    std::sort(touched_.begin(), touched_.end());
    touched_.erase(std::unique(touched_.begin(), touched_.end()), touched_.end());
    for (PairKey p : touched_) {
      int64_t count = count_of(p);
      if (count > 0 && p != pair) queue_.push({count, p});
    }
    touched_.clear();
  }

  const BpeLearnConfig& config_;
  BpeLearned learned_;
  std::unordered_map<std::string, int32_t> ids_;
  std::vector<std::vector<int32_t>> words_;
  std::vector<int64_t> counts_;
  std::vector<uint32_t> stamps_;  // last merge that visited each word (dedups holder lists)
  uint32_t stamp_ = 0;
  std::unordered_map<PairKey, int64_t> pair_counts_;
  std::unordered_map<PairKey, std::vector<int32_t>> where_;  // pair -> words that held it
  std::vector<PairKey> touched_;
  std::priority_queue<Candidate> queue_;
};

}  // namespace

BpeLearned learn_bpe(const std::vector<WordCount>& words, const BpeLearnConfig& config) {
  return Learner(config).run(words);
}

ojson bpe_tokenizer_json(const std::vector<WordCount>& words, const TrainerOptions& options, int64_t& merges) {
  BpeLearnConfig config;
  config.vocab_size = options.vocab_size;
  config.min_frequency = options.min_frequency;
  config.special_tokens = options.resolved_special_tokens();
  for (int b = 0; b < 256; ++b) config.initial_alphabet.push_back(byte_to_char(static_cast<unsigned char>(b)));
  BpeLearned learned = learn_bpe(words, config);
  merges = static_cast<int64_t>(learned.merges.size());

  ojson doc = tokenizer_skeleton(config.special_tokens, options);
  doc["post_processor"] = {
      {"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", false}, {"use_regex", true}};
  doc["decoder"] = {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}};
  ojson vocab = vocab_object(learned.vocab);
  ojson merge_list = ojson::array();
  for (const auto& [left, right] : learned.merges) merge_list.push_back({left, right});
  doc["model"] = {{"type", "BPE"},
                  {"dropout", nullptr},
                  {"unk_token", nullptr},
                  {"continuing_subword_prefix", nullptr},
                  {"end_of_word_suffix", nullptr},
                  {"fuse_unk", false},
                  {"byte_fallback", false},
                  {"ignore_merges", false},
                  {"vocab", std::move(vocab)},
                  {"merges", std::move(merge_list)}};
  return doc;
}

}  // namespace modula::text
