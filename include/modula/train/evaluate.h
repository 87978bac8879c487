// Evaluation and prediction outside a training run: a trained run (its model, modules,
// composition, task heads and label names) or a model with module folders, on records of a
// data file. The metrics are the trainer's own (same batches, same sums: a run evaluated on
// its eval file gives the numbers of its result.json).
//
//   modula::train::EvalSetup s;
//   s.run = "runs/sent";                                   // output folder or config file
//   modula::train::Evaluator ev(s);
//   auto records = modula::train::load_records("dev.jsonl");
//   auto r = ev.evaluate("sent", records, "dev.jsonl");    // r.metrics["accuracy"], r.to_json()
//   auto rows = ev.predict("sent", records, "dev.jsonl");  // + "prediction", "probabilities"
//
// Without a run: s.model, s.adapters (or s.compose + s.modules), s.tasks (type and field
// names) and, for classification, s.heads (a run's heads.safetensors; labels from the
// heads.json beside it).
#pragma once

#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "modula/backbone/generate.h"
#include "modula/train/config.h"

namespace modula::train {

struct EvalSetup {
  // A run: its output folder (run_config.json inside) or its config file. Gives the model
  // (output/model when the run wrote one), tokenizer, modules (output/modules/<name>, or
  // the `path` of modules it did not train), composition (output/compose), tasks with
  // their field names, labels and heads, the seed (MLM masks) and eval.batch_size.
  std::string run;
  // Without a run:
  std::string model;                           // HF model folder
  std::string tokenizer;                       // default: the model folder
  std::vector<std::string> adapters;           // module folders, "DIR" or "DIR:SCALE", on for every task
  std::string compose;                         // a composition spec over `modules`, or a MODULA_COMPOSITION folder
  std::map<std::string, std::string> modules;  // NAME -> DIR: the members `compose` names
  std::string heads;                           // heads.safetensors of a run: classification tasks' heads
  std::vector<TaskConfig> tasks;               // type, fields, max_length; labels default to the head's
  // Both:
  std::string device;      // default: the run's device, else cpu
  int64_t batch_size = 0;  // 0 = the run's eval.batch_size, else 16
  uint64_t seed = 0;       // MLM masking without a run (a run uses its own seed)
};

struct EvalResult {
  std::string task;
  TaskType type = TaskType::CausalLM;
  int64_t examples = 0;
  // loss (mean per scored token / example), accuracy, and perplexity (LM) or macro_f1
  // (classification); "examples" too, as the trainer reports it.
  std::map<std::string, double> metrics;
  nlohmann::json to_json() const;  // {"task", "type", "examples", "metrics"}; NaN as null
};

struct PredictOptions {
  // Causal LM completions: max_new_tokens, temperature (0 = greedy), top_k, top_p, seed.
  // Generation stops at the model's end-of-sequence token.
  GenerateOptions generate;
};

class Evaluator {
 public:
  // Loads everything once. Throws ConfigError / TrainError naming the folder, file or key
  // that is missing or wrong (e.g. a classification task without heads).
  explicit Evaluator(const EvalSetup& setup);
  ~Evaluator();

  // The tasks in order; task(name) accepts a task's name or type ("" = the only task) and
  // returns its config with the label names filled.
  std::vector<std::string> task_names() const;
  const TaskConfig& task(const std::string& name_or_type) const;
  // What a `compose` spec starts untrained (Composition::untrained: a new fuse(...), a
  // learned router), one line each; empty for a run or a trained composition folder.
  std::vector<std::string> untrained() const;

  // Metrics of `records` (JSON objects with the task's fields); `where` names them in
  // errors ("dev.jsonl:3: missing field 'text'").
  EvalResult evaluate(const std::string& task, const std::vector<nlohmann::json>& records, const std::string& where);

  // One output object per record: the record's fields plus
  //   sequence_classification: "prediction" (label name), "probabilities" {label: p};
  //   token_classification:    "prediction" [tag per word], "probabilities" [p of each tag];
  //   causal_lm:               "completion" (text generated after the prompt field, else the text).
  // Gold labels are not needed. masked_lm has no prediction (TrainError).
  std::vector<nlohmann::json> predict(const std::string& task, const std::vector<nlohmann::json>& records,
                                      const std::string& where, const PredictOptions& options = {});

 private:
  struct State;  // src/train/evaluator_state.h
  std::unique_ptr<State> state_;
};

}  // namespace modula::train
