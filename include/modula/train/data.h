// Training data: records from JSONL / CSV / TSV files, encoded with the model's tokenizer
// into examples of one task type, and padded batches with length bucketing.
//
//   auto records = modula::train::load_records("train.jsonl");    // JSON objects
//   auto enc = modula::train::Encoding::build(task, records, *tokenizer, model_config);
//   auto examples = enc.encode(records);
//   for (auto& idx : modula::train::bucketed_batches(lengths(examples), 8, seed)) ...
#pragma once

#include <torch/torch.h>

#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "modula/io/hf_config.h"
#include "modula/text/tokenizer.h"
#include "modula/train/config.h"

namespace modula::train {

constexpr int64_t kIgnoreIndex = -100;  // labels not scored (PyTorch's cross-entropy default)
// A position (token classification: a word's first sub-word) or sequence without a gold
// label, in examples encoded for prediction.
constexpr int64_t kNoLabel = -101;

// JSONL (one object a line; .jsonl/.json), CSV (.csv, RFC 4180 quoting) or TSV (.tsv), the
// latter two with a header row; CSV/TSV values are strings. Throws TrainError naming the
// file and line for unreadable, empty or malformed files.
std::vector<nlohmann::json> load_records(const std::string& path);

struct Example {
  std::vector<int64_t> input_ids;
  std::vector<int64_t> token_type_ids;  // empty = zeros
  std::vector<int64_t> labels;          // per token (LM, token classification), kIgnoreIndex = unscored
  int64_t label = kIgnoreIndex;         // sequence classification
  std::vector<int64_t> metadata;        // the run's metadata ids (TrainConfig::metadata order)
  int64_t length() const { return static_cast<int64_t>(input_ids.size()); }
};

// How one task turns records into examples: tokenizer, special tokens and label names.
class Encoding {
 public:
  // Label names from task.labels or, when empty, the sorted set seen in `train`
  // (numerically sorted when all are integers). Throws ConfigError for a missing field.
  // `metadata`: the run's metadata fields with their values (resolve_metadata); each
  // example carries the index of its record's value of each.
  static Encoding build(const TaskConfig& task, const std::vector<nlohmann::json>& train,
                        const text::Tokenizer& tokenizer, const io::ModelConfig& model,
                        const std::vector<MetadataField>& metadata = {});

  // `where` names the data source in errors (file or "task 'x' eval"). With
  // `for_prediction`, a record may lack its label / tags (kNoLabel marks what would be
  // scored) and a causal-LM record is its prompt alone (the prompt field, else the text,
  // without end-of-sequence): the input of predict (evaluate.h).
  std::vector<Example> encode(const std::vector<nlohmann::json>& records, const std::string& where,
                              bool for_prediction = false) const;

  const std::vector<std::string>& labels() const { return labels_; }
  int64_t pad_id() const { return pad_id_; }
  int64_t mask_id() const { return mask_id_; }  // masked LM; -1 when the tokenizer has none
  const std::vector<int64_t>& special_ids() const { return special_ids_; }

 private:
  Example encode_one(const nlohmann::json& r, const std::string& where, size_t line, bool for_prediction) const;
  int64_t label_index(const nlohmann::json& v, const std::string& where, size_t line) const;

  TaskConfig task_;
  const text::Tokenizer* tokenizer_ = nullptr;
  std::vector<std::string> labels_;
  std::map<std::string, int64_t> label_ids_;
  std::vector<MetadataField> metadata_;
  std::vector<std::map<std::string, int64_t>> metadata_ids_;  // per field: value -> id
  std::vector<int64_t> prefix_, suffix_;                      // special tokens the tokenizer adds around a text
  std::vector<int64_t> special_ids_;
  int64_t pad_id_ = 0, mask_id_ = -1;
  std::vector<int64_t> eos_;
};

struct Batch {
  torch::Tensor input_ids;       // [B,T] int64, right-padded
  torch::Tensor attention_mask;  // [B,T] int64
  torch::Tensor token_type_ids;  // [B,T] int64
  torch::Tensor labels;          // [B,T] (token tasks) or [B] (sequence classification)
  int64_t tokens = 0;            // non-pad tokens
  torch::Tensor metadata;        // [B,F] int64: each row's id of each metadata field
  Batch to(const torch::Device& d) const;
};

Batch collate(const std::vector<const Example*>& examples, int64_t pad_id, bool sequence_labels);

// Records of one data source, named as in errors (a file, or "task 'x' train").
using NamedRecords = std::pair<std::string, const std::vector<nlohmann::json>*>;
// The metadata fields with their values: as declared, or the sorted set (numerically when
// all are integers) of the values in `train`. Throws TrainError naming the source, line and
// field of a record without the field or with a value that is no string or integer.
std::vector<MetadataField> resolve_metadata(std::vector<MetadataField> fields, const std::vector<NamedRecords>& train);

// Masked LM corruption (Devlin et al. 2019): each non-special, non-pad token is chosen with
// probability p; chosen tokens become [MASK] 80%, a random token 10%, unchanged 10%. Labels
// are the original ids at chosen positions, kIgnoreIndex elsewhere. Deterministic in `seed`.
void mask_tokens(Batch& batch, double p, int64_t mask_id, int64_t vocab_size, const std::vector<int64_t>& special_ids,
                 uint64_t seed);

// Batches of example indices for one epoch with length bucketing: shuffle (seeded), sort
// windows of 50 batches by length, cut into batches, shuffle the batches.
std::vector<std::vector<int64_t>> bucketed_batches(const std::vector<int64_t>& lengths, int64_t batch_size,
                                                   uint64_t seed);

}  // namespace modula::train
