// Unigram language model: Viterbi best segmentation over piece log-probabilities
// (HF models::unigram encode_optimized, after SentencePiece unigram_model.cc).
#include <limits>

#include "text/models.h"
#include "text/trie.h"
#include "text/unicode.h"

namespace modula::text {
namespace {

constexpr double kUnkPenalty = 10.0;  // HF/SentencePiece: unk scores min_score - 10

class Unigram : public Model {
 public:
  Unigram(const json& j, const std::string& where) : byte_fallback_(get_bool_or(j, where, "byte_fallback", false)) {
    const json& list = require(j, where, "vocab");
    if (!list.is_array()) config_fail(where + ".vocab", "expected an array of [piece, score]");
    for (size_t id = 0; id < list.size(); ++id) {
      const json& e = list[id];
      if (!e.is_array() || e.size() != 2 || !e[0].is_string() || !e[1].is_number())
        config_fail(where + ".vocab[" + std::to_string(id) + "]", "expected [piece, score]");
      pieces_.push_back(e[0].get<std::string>());
      scores_.push_back(e[1].get<double>());
      vocab_.add(pieces_.back(), static_cast<int64_t>(id));
      trie_.insert(pieces_.back(), static_cast<int64_t>(id));
      min_score_ = std::min(min_score_, scores_.back());
    }
    if (j.contains("unk_id") && !j.at("unk_id").is_null()) {
      unk_id_ = get_int_or(j, where, "unk_id", 0);
      if (*unk_id_ < 0 || *unk_id_ >= static_cast<int64_t>(pieces_.size()))
        config_fail(where + ".unk_id", "out of range");
    }
  }

  void tokenize(const std::string& word, std::vector<int64_t>& ids) const override {
    for (const std::string& piece : best_path(word)) {
      if (auto id = vocab_.find(piece)) {
        ids.push_back(*id);
      } else if (!(byte_fallback_ && push_bytes(piece, ids))) {
        ids.push_back(require_unk());
      }
    }
  }

  std::optional<int64_t> token_to_id(const std::string& t) const override { return vocab_.find(t); }
  std::optional<std::string> id_to_token(int64_t id) const override {
    if (id < 0 || id >= static_cast<int64_t>(pieces_.size())) return std::nullopt;
    return pieces_[static_cast<size_t>(id)];
  }
  int64_t vocab_size() const override { return static_cast<int64_t>(pieces_.size()); }

 private:
  struct Node {
    int64_t id = -1;
    double score = 0;
    long start = -1;  // -1: not reached yet
  };

  int64_t require_unk() const {
    if (!unk_id_) throw TokenizerError("[tokenizer] Unigram: text needs an unknown piece but the model has no unk_id");
    return *unk_id_;
  }

  // Relaxes node `end` with a piece starting at `start`; the first best candidate wins ties.
  static void relax(std::vector<Node>& best, size_t start, size_t end, int64_t id, double score) {
    double candidate = best[start].score + score;
    if (best[end].start < 0 || candidate > best[end].score) best[end] = {id, candidate, static_cast<long>(start)};
  }

  // Pieces of the best segmentation; consecutive unknown pieces are fused (HF fuse_unk = true).
  std::vector<std::string> best_path(const std::string& s) const {
    std::vector<Node> best(s.size() + 1);
    best[0].start = 0;
    for (size_t start = 0; start < s.size();) {
      size_t next = start;
      unicode::next_code_point(s, next);
      size_t char_len = next - start;
      bool single_char_piece = false;
      trie_.for_each_prefix(s, start, [&](size_t len, int64_t id) {
        relax(best, start, start + len, id, scores_[static_cast<size_t>(id)]);
        single_char_piece = single_char_piece || len == char_len;
      });
      if (!single_char_piece && unk_id_) relax(best, start, next, *unk_id_, min_score_ - kUnkPenalty);
      start = next;
    }
    std::vector<std::string> reversed;
    std::string unk_run;
    for (size_t end = s.size(); end > 0;) {
      const Node& node = best[end];
      if (node.start < 0) require_unk();  // unreachable position: only an unk piece could cover it
      size_t start = static_cast<size_t>(node.start);
      std::string piece = s.substr(start, end - start);
      if (unk_id_ && node.id == *unk_id_) {
        unk_run = piece + unk_run;
      } else {
        if (!unk_run.empty()) reversed.push_back(std::move(unk_run));
        unk_run.clear();
        reversed.push_back(std::move(piece));
      }
      end = start;
    }
    if (!unk_run.empty()) reversed.push_back(std::move(unk_run));
    return std::vector<std::string>(reversed.rbegin(), reversed.rend());
  }

  bool push_bytes(const std::string& piece, std::vector<int64_t>& ids) const {
    std::vector<int64_t> byte_ids;
    for (unsigned char b : piece) {
      auto id = vocab_.find(byte_fallback_token(b));
      if (!id) return false;
      byte_ids.push_back(*id);
    }
    ids.insert(ids.end(), byte_ids.begin(), byte_ids.end());
    return true;
  }

  std::vector<std::string> pieces_;
  std::vector<double> scores_;
  Vocab vocab_;
  ByteTrie trie_;
  double min_score_ = std::numeric_limits<double>::infinity();
  std::optional<int64_t> unk_id_;
  bool byte_fallback_;
};

}  // namespace

std::unique_ptr<Model> make_unigram(const json& j, const std::string& where) {
  return std::make_unique<Unigram>(j, where);
}

}  // namespace modula::text
