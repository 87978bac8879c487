// The config-driven trainer: one run = backbone + modules + tasks + optimisation.
//
//   auto cfg = modula::train::load_train_config("run.yaml");
//   modula::train::Trainer trainer(cfg);                       // data from the config's files
//   auto result = trainer.run({.on_step = [](const StepInfo& s) { ... }});
//
// From C++ with in-memory data (records are JSON objects with the task's fields):
//
//   modula::train::Datasets data;
//   data["sst2"].train = {{{"text", "good"}, {"label", "pos"}}, ...};
//   auto result = modula::train::train(cfg, data);
//
// What a run does:
//   - loads the backbone (or builds it from config.json with random init for pretraining),
//     freezes it unless train_backbone, attaches/loads the configured modules;
//   - with `compose`, applies the composition spec over the modules (fusions train, their
//     members stay frozen; route(task, ...) routes each batch by its task index);
//   - one head per classification task (sequence: pooled hidden -> labels; token: per token);
//   - AdamW with parameter groups (modules / routers / heads / backbone), linear warmup then
//     constant/linear/cosine decay, gradient accumulation, clipping, bf16 autocast on CUDA;
//   - multi-task sampling (proportional / temperature / uniform), each batch single-task with
//     that task's modules enabled;
//   - continual learning: tasks in sequence, a new module per task, earlier ones frozen; the
//     task × time accuracy matrix and average forgetting;
//   - evaluation (accuracy, macro-F1, perplexity), early stopping, metrics JSONL
//     (output/metrics.jsonl), atomic checkpoints (output/checkpoints/step-N) with resume;
//   - at the end: modules (output/modules/<name>, PEFT folders), the composition (output/compose/,
//     a MODULA_COMPOSITION folder that reloads over the modules; its fusions in output/compose/<fusion>/), heads
//     (output/heads.safetensors), the model when train_backbone/save_model (output/model).
//
// The library never prints: progress goes to the callbacks.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "modula/train/config.h"

namespace modula::train {

class Distributed;  // distributed.h

// Records of one task (JSON objects, as one JSONL line each).
struct TaskData {
  std::vector<nlohmann::json> train, eval;
};
using Datasets = std::map<std::string, TaskData>;  // by task name; overrides the config's files

struct StepInfo {
  int64_t step = 0;         // optimizer steps done (within the current phase)
  int64_t total_steps = 0;  // of the current phase
  std::string phase;        // "train", "lt_sft" (LT-SFT dense phase), "continual/<task>", "baseline/<task>"
  std::string task;         // task of the last batch
  double loss = 0;          // mean loss over the accumulated micro-batches
  double lr = 0;            // base learning rate after the schedule
  double grad_norm = 0;     // before clipping
  double tokens_per_s = 0;  // non-pad tokens seen per second since the phase started
  double elapsed_s = 0;
  double eta_s = 0;
  double allreduce_s = 0;  // data parallel: gradient all-reduce seconds of this step (0 in one process)
};

struct EvalInfo {
  int64_t step = 0;
  std::string phase;
  std::string task;
  std::map<std::string, double> metrics;  // loss, accuracy, macro_f1 / perplexity
};

struct Callbacks {
  std::function<void(const StepInfo&)> on_step;
  std::function<void(const EvalInfo&)> on_eval;
  std::function<void(const std::string&)> on_message;  // one-line notes (resume, saves, counts)
};

struct ContinualResult {
  std::vector<std::string> tasks;
  // accuracy[t][j]: accuracy on task j after training task t (NaN for j > t is not written:
  // every task is evaluated at every time).
  std::vector<std::vector<double>> accuracy;
  double average_forgetting = 0;     // mean_j<T-1 (max_t<T-1 a[t][j] − a[T-1][j])
  double average_accuracy = 0;       // mean_j a[T-1][j]
  int64_t trainable_parameters = 0;  // all the sequence trained: its modules (or the backbone) and the heads
};

struct TrainResult {
  int64_t steps = 0;  // optimizer steps of the main phase
  int64_t trainable_parameters = 0;
  int64_t total_parameters = 0;
  double final_loss = 0;
  bool stopped_early = false;
  bool resumed = false;
  std::map<std::string, std::map<std::string, double>> eval;   // final metrics by task
  std::optional<ContinualResult> continual, baseline, shared;  // continual learning: per-task modules, full
                                                               // fine-tuning, one shared module
  std::string output;                                          // output folder
};

class Trainer {
 public:
  // Validates the config against the data: tasks, fields, labels, modules. Throws
  // ConfigError / TrainError naming what is wrong. With `dist` (world size > 1) the run is
  // data parallel: the contract is in distributed.h; rank 0 writes every output.
  explicit Trainer(TrainConfig config, Datasets data = {}, std::shared_ptr<Distributed> dist = nullptr);
  ~Trainer();

  // Runs the whole config; with resume = true continues from the newest complete
  // checkpoint in output/checkpoints (TrainError naming the folder when there is none).
  // Module folders are written with PEFT's base_model_name_or_path (the run's model) and
  // task_type (CAUSAL_LM, SEQ_CLS, TOKEN_CLS; FEATURE_EXTRACTION for masked LM or mixed).
  TrainResult run(const Callbacks& callbacks = {}, bool resume = false);

  const TrainConfig& config() const;

 private:
  struct State;
  std::unique_ptr<State> state_;
};

// Trainer(config, data).run(callbacks, resume).
TrainResult train(const TrainConfig& config, const Datasets& data = {}, const Callbacks& callbacks = {},
                  bool resume = false);

}  // namespace modula::train
