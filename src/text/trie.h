// A byte trie for prefix searches (Unigram lattice, added-token matching).
#pragma once

#include <cstdint>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace modula::text {

class ByteTrie {
 public:
  ByteTrie() : values_(1, -1) {}

  void insert(std::string_view key, int64_t value) {
    size_t node = 0;
    for (unsigned char b : key) {
      auto [it, fresh] = edges_.try_emplace(edge(node, b), values_.size());
      if (fresh) values_.push_back(-1);
      node = it->second;
    }
    values_[node] = value;
  }

  // Calls f(length, value) for every key that is a prefix of text.substr(pos), shortest first.
  template <typename F>
  void for_each_prefix(std::string_view text, size_t pos, F&& f) const {
    size_t node = 0;
    for (size_t i = pos; i < text.size(); ++i) {
      auto it = edges_.find(edge(node, static_cast<unsigned char>(text[i])));
      if (it == edges_.end()) return;
      node = it->second;
      if (values_[node] >= 0) f(i + 1 - pos, values_[node]);
    }
  }

 private:
  static uint64_t edge(size_t node, unsigned char b) { return (static_cast<uint64_t>(node) << 8) | b; }

  std::unordered_map<uint64_t, size_t> edges_;
  std::vector<int64_t> values_;  // per node: stored value or -1
};

}  // namespace modula::text
