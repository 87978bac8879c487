// Internals of tokenizer training (include/modula/text/trainer.h): the BPE merge learner
// shared by bpe and wordpiece, and one tokenizer.json writer per model.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "modula/text/trainer.h"

namespace modula::text {

using ojson = nlohmann::ordered_json;  // keeps HF's key order in the written file

constexpr std::string_view kTrainerTag = "tokenizer-trainer";

// A pre-tokenized word and how often it was seen; lists are sorted by word for determinism.
using WordCount = std::pair<std::string, int64_t>;

struct BpeLearnConfig {
  int64_t vocab_size = 0;
  int64_t min_frequency = 0;
  std::vector<std::string> special_tokens;
  std::vector<char32_t> initial_alphabet;  // always kept (ByteLevel: the 256 byte symbols)
  int64_t limit_alphabet = 0;              // 0: keep every character seen
  std::string prefix;                      // continuing_subword_prefix ("##" for wordpiece)
};

struct BpeLearned {
  std::vector<std::string> vocab;                           // id -> token
  std::vector<std::pair<std::string, std::string>> merges;  // in rank order
};

// HF BpeTrainer::do_train: specials, alphabet sorted by code point, then merges of the most
// frequent pair (ties: smallest (left id, right id)) with incremental pair counts.
BpeLearned learn_bpe(const std::vector<WordCount>& words, const BpeLearnConfig& config);

// The pipeline sections used both to count words and in the written file.
ojson trainer_normalizer(const TrainerOptions& options);
ojson trainer_pre_tokenizer(const TrainerOptions& options);

// Complete tokenizer.json documents.
ojson bpe_tokenizer_json(const std::vector<WordCount>& words, const TrainerOptions& options, int64_t& merges);
ojson wordpiece_tokenizer_json(const std::vector<WordCount>& words, const TrainerOptions& options, int64_t& merges);
ojson unigram_tokenizer_json(const std::vector<WordCount>& words, const TrainerOptions& options);

// Shared writer parts: the added_tokens entry list for special tokens at ids 0..n-1, and the
// file skeleton in HF's key order.
ojson special_added_tokens(const std::vector<std::string>& specials);
ojson tokenizer_skeleton(const std::vector<std::string>& specials, const TrainerOptions& options);

// {"token": id, ...} in id order for unique tokens (appended without ordered_json's linear
// key search).
ojson vocab_object(const std::vector<std::string>& tokens);

// Number of distinct code points in the words (for the vocab_size check).
int64_t alphabet_size(const std::vector<WordCount>& words);

}  // namespace modula::text
