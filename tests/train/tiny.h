// Tiny word-level tokenizers and data sets for training tests (ids fit the fixture models'
// 512-token vocabularies).
#pragma once

#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "support/temp_dir.h"

namespace modula::testing {

inline const std::vector<std::string>& tiny_words() {
  static const std::vector<std::string> w = {
      "good", "bad", "great", "awful", "movie",  "film",  "the",    "a",  "is",    "was",   "very", "not", "red",
      "blue", "cat", "dog",   "runs",  "sleeps", "paris", "london", "in", "lives", "alice", "bob",  "yes", "no"};
  return w;
}

// WordLevel tokenizer.json; bert = [CLS] x [SEP] template with [PAD]/[MASK], else <s> x.
inline std::string write_tiny_tokenizer(const std::string& path, bool bert) {
  nlohmann::json vocab = nlohmann::json::object();
  std::vector<std::string> specials = bert ? std::vector<std::string>{"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"}
                                           : std::vector<std::string>{"<unk>", "<s>", "</s>"};
  int64_t id = 0;
  for (const auto& s : specials) vocab[s] = id++;
  for (const auto& w : tiny_words()) vocab[w] = id++;
  nlohmann::json tok = {{"version", "1.0"},
                        {"normalizer", nullptr},
                        {"pre_tokenizer", {{"type", "WhitespaceSplit"}}},
                        {"model", {{"type", "WordLevel"}, {"vocab", vocab}, {"unk_token", bert ? "[UNK]" : "<unk>"}}},
                        {"decoder", nullptr}};
  auto special = [](const std::string& t, int64_t i) {
    return nlohmann::json{{"id", t}, {"ids", {i}}, {"tokens", {t}}};
  };
  if (bert)
    tok["post_processor"] = {
        {"type", "TemplateProcessing"},
        {"single",
         {{{"SpecialToken", {{"id", "[CLS]"}, {"type_id", 0}}}},
          {{"Sequence", {{"id", "A"}, {"type_id", 0}}}},
          {{"SpecialToken", {{"id", "[SEP]"}, {"type_id", 0}}}}}},
        {"pair", {{{"Sequence", {{"id", "A"}, {"type_id", 0}}}}, {{"Sequence", {{"id", "B"}, {"type_id", 1}}}}}},
        {"special_tokens", {{"[CLS]", special("[CLS]", 2)}, {"[SEP]", special("[SEP]", 3)}}}};
  else
    tok["post_processor"] = {
        {"type", "TemplateProcessing"},
        {"single",
         {{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}}, {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}},
        {"pair", {{{"Sequence", {{"id", "A"}, {"type_id", 0}}}}, {{"Sequence", {{"id", "B"}, {"type_id", 1}}}}}},
        {"special_tokens", {{"<s>", special("<s>", 1)}}}};
  std::ofstream(path) << tok.dump(1);
  return path;
}

inline void write_lines(const std::string& path, const std::vector<nlohmann::json>& rows) {
  std::ofstream out(path);
  for (const auto& r : rows) out << r.dump() << "\n";
}

// Sentiment-like: label = whether "good"/"great" appears.
inline std::vector<nlohmann::json> tiny_classification(int n, const std::string& a = "good",
                                                       const std::string& b = "bad") {
  std::vector<nlohmann::json> rows;
  const std::vector<std::string> fill = {"the movie was", "a film is", "the film was very", "a movie"};
  for (int i = 0; i < n; ++i) {
    bool pos = i % 2 == 0;
    rows.push_back({{"text", fill[i % 4] + " " + (pos ? a : b)}, {"label", pos ? "pos" : "neg"}});
  }
  return rows;
}

inline std::vector<nlohmann::json> tiny_tagging(int n) {
  std::vector<nlohmann::json> rows;
  const std::vector<std::vector<std::string>> s = {{"alice", "lives", "in", "paris"},
                                                   {"bob", "runs", "in", "london"},
                                                   {"the", "cat", "sleeps"},
                                                   {"alice", "is", "in", "london"}};
  for (int i = 0; i < n; ++i) {
    const auto& words = s[i % s.size()];
    std::vector<std::string> tags;
    for (const auto& w : words)
      tags.push_back(w == "alice" || w == "bob" ? "PER" : w == "paris" || w == "london" ? "LOC" : "O");
    rows.push_back({{"tokens", words}, {"tags", tags}});
  }
  return rows;
}

inline std::vector<nlohmann::json> tiny_text(int n) {
  std::vector<nlohmann::json> rows;
  const std::vector<std::string> s = {"the cat sleeps in paris", "a dog runs in london", "alice lives in paris",
                                      "bob lives in london", "the red cat is not blue"};
  for (int i = 0; i < n; ++i) rows.push_back({{"text", s[i % s.size()]}});
  return rows;
}

}  // namespace modula::testing
