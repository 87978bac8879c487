// Unigram training (SentencePiece unigram_model_trainer.cc, as in HF UnigramTrainer): seed
// substrings scored freq x length, EM over each word's lattice with the Bayesian M-step
// (digamma), pruning of the pieces whose removal costs the least likelihood.
#include <algorithm>
#include <cmath>
#include <limits>
#include <unordered_map>

#include "text/trainers.h"
#include "text/unicode.h"

namespace modula::text {
namespace {

constexpr double kExpectedFrequencyThreshold = 0.5;  // SentencePiece: rarer pieces are dropped
constexpr double kMinScorePenaltyDelta = 0.0001;     // for required characters the model lost
constexpr double kNegInf = -std::numeric_limits<double>::infinity();

// psi(x) by recurrence up to x >= 7, then the asymptotic series.
double digamma(double x) {
  double result = 0;
  for (; x < 7; x += 1) result -= 1 / x;
  double f = 1 / (x * x);
  return result + std::log(x) - 0.5 / x -
         f * (1.0 / 12 - f * (1.0 / 120 - f * (1.0 / 252 - f * (1.0 / 240 - f / 132))));
}

double log_add(double a, double b) {
  if (a == kNegInf) return b;
  if (b == kNegInf) return a;
  double hi = std::max(a, b);
  return hi + std::log1p(std::exp(std::min(a, b) - hi));
}

// Byte offsets of each code point of s, plus s.size().
std::vector<size_t> char_offsets(const std::string& s) {
  std::vector<size_t> offsets;
  for (size_t i = 0; i < s.size();) {
    offsets.push_back(i);
    unicode::next_code_point(s, i);
  }
  offsets.push_back(s.size());
  return offsets;
}

struct Edge {
  int32_t begin, end;  // character positions in the word
  int32_t piece;
};

class UnigramLearner {
 public:
  UnigramLearner(const std::vector<WordCount>& words, const TrainerOptions& options)
      : words_(words), options_(options) {}

  // Final pieces with their log-probabilities, specials first (score 0), then by score.
  std::vector<std::pair<std::string, double>> run() {
    make_seeds();
    build_lattices();
    size_t desired = static_cast<size_t>(options_.vocab_size) * 11 / 10;
    for (;;) {
      for (int64_t i = 0; i < options_.n_sub_iterations; ++i) m_step(e_step());
      size_t before = alive_count();
      if (before <= desired || !prune(desired) || alive_count() == before) break;
      compact_lattices();
    }
    return finalize();
  }

 private:
  int32_t add_piece(const std::string& piece, double score, bool is_char) {
    auto id = static_cast<int32_t>(pieces_.size());
    pieces_.push_back(piece);
    scores_.push_back(score);
    alive_.push_back(true);
    is_char_.push_back(is_char);
    ids_.emplace(piece, id);
    return id;
  }

  size_t alive_count() const { return static_cast<size_t>(std::count(alive_.begin(), alive_.end(), true)); }

  // Characters by frequency, then substrings of 2..max_piece_length characters seen at
  // least twice, by frequency x length, up to seed_size; scores are log relative scores.
  void make_seeds() {
    std::unordered_map<std::string, int64_t> chars, substrings;
    auto max_len = static_cast<size_t>(options_.max_piece_length);
    for (const auto& [word, count] : words_) {
      std::vector<size_t> off = char_offsets(word);
      size_t n = off.size() - 1;
      for (size_t i = 0; i < n; ++i) {
        chars[word.substr(off[i], off[i + 1] - off[i])] += count;
        for (size_t len = 2; len <= max_len && i + len <= n; ++len)
          substrings[word.substr(off[i], off[i + len] - off[i])] += count;
      }
    }
    auto by_score = [](const std::pair<std::string, double>& a, const std::pair<std::string, double>& b) {
      return a.second != b.second ? a.second > b.second : a.first < b.first;
    };
    std::vector<std::pair<std::string, double>> seeds;
    for (const auto& [c, freq] : chars) seeds.emplace_back(c, static_cast<double>(freq));
    std::sort(seeds.begin(), seeds.end(), by_score);
    size_t n_chars = seeds.size();
    std::vector<std::pair<std::string, double>> subs;
    for (const auto& [s, freq] : substrings)
      if (freq >= 2) subs.emplace_back(s, static_cast<double>(freq) * unicode::code_point_count(s));
    substrings.clear();
    std::sort(subs.begin(), subs.end(), by_score);
    auto room = static_cast<size_t>(std::max<int64_t>(options_.seed_size - static_cast<int64_t>(n_chars), 0));
    seeds_cut_ = subs.size() > room;
    if (seeds_cut_) subs.resize(room);
    seeds.insert(seeds.end(), std::make_move_iterator(subs.begin()), std::make_move_iterator(subs.end()));
    double total = 0;
    for (const auto& s : seeds) total += s.second;
    for (size_t i = 0; i < seeds.size(); ++i)
      add_piece(seeds[i].first, std::log(seeds[i].second) - std::log(total), i < n_chars);
  }

  // Every seed piece occurring in each word, ordered by start position. Unless seed_size cut
  // the seeds, a substring that is no seed (seen once) has no longer seed after it.
  void build_lattices() {
    auto max_len = static_cast<size_t>(options_.max_piece_length);
    word_begin_.push_back(0);
    for (const auto& word : words_) {
      std::vector<size_t> off = char_offsets(word.first);
      size_t n = off.size() - 1;
      word_chars_.push_back(static_cast<int32_t>(n));
      for (size_t i = 0; i < n; ++i)
        for (size_t len = 1; len <= max_len && i + len <= n; ++len) {
          auto it = ids_.find(word.first.substr(off[i], off[i + len] - off[i]));
          if (it != ids_.end())
            edges_.push_back({static_cast<int32_t>(i), static_cast<int32_t>(i + len), it->second});
          else if (!seeds_cut_ && len >= 2)
            break;
        }
      word_begin_.push_back(edges_.size());
    }
  }

  // Drops the dead pieces from the edges and from the piece index (a smaller index keeps
  // piece_edges' lookups in cache).
  void compact_lattices() {
    std::unordered_map<std::string, int32_t> live;
    live.reserve(alive_count());
    for (size_t p = 0; p < pieces_.size(); ++p)
      if (alive_[p]) live.emplace(pieces_[p], static_cast<int32_t>(p));
    ids_ = std::move(live);
    std::vector<Edge> kept;
    std::vector<size_t> begins{0};
    for (size_t w = 0; w < words_.size(); ++w) {
      for (size_t e = word_begin_[w]; e < word_begin_[w + 1]; ++e)
        if (alive_[static_cast<size_t>(edges_[e].piece)]) kept.push_back(edges_[e]);
      begins.push_back(kept.size());
    }
    edges_ = std::move(kept);
    word_begin_ = std::move(begins);
  }

  // Expected piece counts: forward-backward over each word, weighted by its count.
  std::vector<double> e_step() const {
    std::vector<double> expected(pieces_.size(), 0.0);
    std::vector<double> alpha, beta;
    for (size_t w = 0; w < words_.size(); ++w) {
      size_t n = static_cast<size_t>(word_chars_[w]), first = word_begin_[w], last = word_begin_[w + 1];
      alpha.assign(n + 1, kNegInf);
      beta.assign(n + 1, kNegInf);
      alpha[0] = beta[n] = 0;
      for (size_t e = first; e < last; ++e) {
        const Edge& d = edges_[e];
        if (alive_[static_cast<size_t>(d.piece)])
          alpha[static_cast<size_t>(d.end)] =
              log_add(alpha[static_cast<size_t>(d.end)], alpha[static_cast<size_t>(d.begin)] + scores_[d.piece]);
      }
      for (size_t e = last; e-- > first;) {
        const Edge& d = edges_[e];
        if (alive_[static_cast<size_t>(d.piece)])
          beta[static_cast<size_t>(d.begin)] =
              log_add(beta[static_cast<size_t>(d.begin)], beta[static_cast<size_t>(d.end)] + scores_[d.piece]);
      }
      double z = alpha[n];
      if (z == kNegInf) continue;
      auto count = static_cast<double>(words_[w].second);
      for (size_t e = first; e < last; ++e) {
        const Edge& d = edges_[e];
        if (!alive_[static_cast<size_t>(d.piece)]) continue;
        double lp = alpha[static_cast<size_t>(d.begin)] + scores_[d.piece] + beta[static_cast<size_t>(d.end)] - z;
        expected[static_cast<size_t>(d.piece)] += count * std::exp(lp);
      }
    }
    return expected;
  }

  // Drops pieces expected less than the threshold (characters stay, so every word keeps a
  // segmentation) and rescores: digamma(freq) - digamma(total).
  void m_step(const std::vector<double>& expected) {
    double total = 0;
    for (size_t p = 0; p < pieces_.size(); ++p) {
      if (!alive_[p]) continue;
      if (expected[p] < kExpectedFrequencyThreshold && !is_char_[p]) {
        alive_[p] = false;
        continue;
      }
      total += std::max(expected[p], kExpectedFrequencyThreshold);
    }
    double log_total = digamma(total);
    for (size_t p = 0; p < pieces_.size(); ++p)
      if (alive_[p]) scores_[p] = digamma(std::max(expected[p], kExpectedFrequencyThreshold)) - log_total;
  }

  // Best path over the edges of one word (or of a piece); returns its pieces, empty when
  // unreachable. skip: a piece to leave out (the piece whose alternatives are sought).
  std::vector<int32_t> viterbi(const Edge* first, const Edge* last, size_t n, int32_t skip, double* score) const {
    std::vector<double> best(n + 1, kNegInf);
    std::vector<const Edge*> back(n + 1, nullptr);
    best[0] = 0;
    for (const Edge* e = first; e != last; ++e) {
      const Edge& d = *e;
      if (d.piece == skip || !alive_[static_cast<size_t>(d.piece)]) continue;
      double s = best[static_cast<size_t>(d.begin)] + scores_[d.piece];
      if (s > best[static_cast<size_t>(d.end)]) {
        best[static_cast<size_t>(d.end)] = s;
        back[static_cast<size_t>(d.end)] = &d;
      }
    }
    std::vector<int32_t> path;
    if (best[n] == kNegInf) return path;
    for (size_t pos = n; pos > 0; pos = static_cast<size_t>(back[pos]->begin)) path.push_back(back[pos]->piece);
    std::reverse(path.begin(), path.end());
    if (score) *score = best[n];
    return path;
  }

  // The live pieces inside a piece's text, as lattice edges.
  std::vector<Edge> piece_edges(const std::string& piece, size_t& n) const {
    std::vector<size_t> off = char_offsets(piece);
    n = off.size() - 1;
    std::vector<Edge> edges;
    for (size_t i = 0; i < n; ++i)
      for (size_t j = i + 1; j <= n; ++j) {
        auto it = ids_.find(piece.substr(off[i], off[j] - off[i]));
        if (it != ids_.end() && alive_[static_cast<size_t>(it->second)])
          edges.push_back({static_cast<int32_t>(i), static_cast<int32_t>(j), it->second});
      }
    return edges;
  }

  // Keeps max(desired, shrinking_factor x live) pieces: characters, pieces without an
  // alternative segmentation, then those whose removal loses the most likelihood.
  // false when nothing could be pruned.
  bool prune(size_t desired) {
    compact_lattices();  // the M-steps dropped pieces since the last pruning
    std::vector<double> freq(pieces_.size(), 0.0);
    double vsum = 0;
    for (size_t w = 0; w < words_.size(); ++w) {
      auto count = static_cast<double>(words_[w].second);
      vsum += count;
      const Edge* first = edges_.data() + word_begin_[w];
      const Edge* last = edges_.data() + word_begin_[w + 1];
      for (int32_t p : viterbi(first, last, static_cast<size_t>(word_chars_[w]), -1, nullptr))
        freq[static_cast<size_t>(p)] += count;
    }
    double sum = 0;
    for (double f : freq) sum += f;
    double log_sum = std::log(sum);

    std::vector<std::pair<double, int32_t>> candidates;  // (loss, piece)
    std::vector<bool> keep(pieces_.size(), false);
    size_t kept = 0;
    for (size_t p = 0; p < pieces_.size(); ++p) {
      if (!alive_[p]) continue;
      if (is_char_[p]) {
        keep[p] = true, ++kept;
        continue;
      }
      size_t n = 0;
      std::vector<Edge> edges = piece_edges(pieces_[p], n);
      double alt_score = kNegInf;
      std::vector<int32_t> alt =
          viterbi(edges.data(), edges.data() + edges.size(), n, static_cast<int32_t>(p), &alt_score);
      bool piece_is_best = alt.empty() || scores_[p] >= alt_score;
      if (!piece_is_best) {
        if (freq[p] > 0) keep[p] = true, ++kept;  // HF/SentencePiece: no alternatives, kept
        continue;
      }
      if (alt.empty()) {
        keep[p] = true, ++kept;
        continue;
      }
      if (freq[p] == 0) continue;
      double logprob_sp = std::log(freq[p]) - log_sum;
      double logsum_alt = std::log(sum + freq[p] * static_cast<double>(alt.size() - 1));
      double logprob_alt = 0;
      for (int32_t a : alt) logprob_alt += std::log(freq[static_cast<size_t>(a)] + freq[p]) - logsum_alt;
      candidates.emplace_back(freq[p] / vsum * (logprob_sp - logprob_alt), static_cast<int32_t>(p));
    }
    size_t target =
        std::max(desired, static_cast<size_t>(static_cast<double>(alive_count()) * options_.shrinking_factor));
    std::sort(candidates.begin(), candidates.end(), [](const auto& a, const auto& b) {
      return a.first != b.first ? a.first > b.first : a.second < b.second;
    });
    for (const auto& [loss, p] : candidates) {
      if (kept >= target) break;
      keep[static_cast<size_t>(p)] = true, ++kept;
    }
    bool changed = false;
    for (size_t p = 0; p < pieces_.size(); ++p)
      if (alive_[p] && !keep[p]) alive_[p] = false, changed = true;
    return changed;
  }

  // Every corpus character, then the best-scored pieces up to vocab_size; sorted by score.
  std::vector<std::pair<std::string, double>> finalize() const {
    std::vector<std::string> specials = options_.resolved_special_tokens();
    auto room = static_cast<size_t>(options_.vocab_size) - specials.size();
    double min_score = 0;
    for (size_t p = 0; p < pieces_.size(); ++p)
      if (alive_[p]) min_score = std::min(min_score, scores_[p]);
    std::vector<std::pair<std::string, double>> chosen;
    double penalty = 0;
    for (size_t p = 0; p < pieces_.size(); ++p) {
      if (!is_char_[p]) continue;
      chosen.emplace_back(pieces_[p], alive_[p] ? scores_[p] : min_score - (penalty += kMinScorePenaltyDelta));
    }
    std::vector<size_t> rest;
    for (size_t p = 0; p < pieces_.size(); ++p)
      if (alive_[p] && !is_char_[p]) rest.push_back(p);
    std::sort(rest.begin(), rest.end(), [&](size_t a, size_t b) {
      return scores_[a] != scores_[b] ? scores_[a] > scores_[b] : pieces_[a] < pieces_[b];
    });
    for (size_t p : rest) {
      if (chosen.size() >= room) break;
      chosen.emplace_back(pieces_[p], scores_[p]);
    }
    std::stable_sort(chosen.begin(), chosen.end(), [](const auto& a, const auto& b) { return a.second > b.second; });
    std::vector<std::pair<std::string, double>> out;
    for (const std::string& s : specials) out.emplace_back(s, 0.0);
    for (auto& c : chosen)
      if (std::find(specials.begin(), specials.end(), c.first) == specials.end()) out.push_back(std::move(c));
    return out;
  }

  const std::vector<WordCount>& words_;
  const TrainerOptions& options_;
  std::vector<std::string> pieces_;
  std::vector<double> scores_;
  std::vector<bool> alive_, is_char_;
  bool seeds_cut_ = false;  // seed_size dropped some substrings seen twice or more
  std::unordered_map<std::string, int32_t> ids_;
  std::vector<Edge> edges_;          // all words' lattices, one run per word
  std::vector<size_t> word_begin_;   // word w's edges: [word_begin_[w], word_begin_[w + 1])
  std::vector<int32_t> word_chars_;  // characters per word
};

}  // namespace

ojson unigram_tokenizer_json(const std::vector<WordCount>& words, const TrainerOptions& options) {
  std::vector<std::pair<std::string, double>> pieces = UnigramLearner(words, options).run();
  std::vector<std::string> specials = options.resolved_special_tokens();
  std::string unk = options.resolved_unk_token();
  int64_t unk_id = std::find(specials.begin(), specials.end(), unk) - specials.begin();

  ojson doc = tokenizer_skeleton(specials, options);
  doc["decoder"] = {{"type", "Metaspace"}, {"replacement", "\u2581"}, {"prepend_scheme", "always"}, {"split", true}};
  ojson vocab = ojson::array();
  for (const auto& [piece, score] : pieces) vocab.push_back({piece, score});
  doc["model"] = {{"type", "Unigram"}, {"unk_id", unk_id}, {"vocab", std::move(vocab)}, {"byte_fallback", false}};
  return doc;
}

}  // namespace modula::text
