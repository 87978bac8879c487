// A training run as data: backbone + modules + tasks + optimisation (survey §6).
// Written as YAML or JSON; every field has a default except `model` and `tasks`.
//
//   model: tests/fixtures/hf/models/llama     # HF folder (or, for pretraining, a config.json)
//   tokenizer: path/to/tokenizer.json         # default: the model folder
//   output: runs/sst2
//   seed: 0
//   train_backbone: false                     # full fine-tuning when true
//   modules:                                  # fresh (PEFT-style config) or a module folder
//     - {name: sst2, config: {peft_type: LORA, r: 4, target_modules: [q_proj, v_proj]}}
//     - {name: old, path: adapters/old, trainable: false}
//   tasks:
//     - {name: sst2, type: sequence_classification, train: train.jsonl, eval: dev.jsonl,
//        text_field: text, label_field: label, modules: [sst2]}
//   optim: {lr: 1e-3, lr_heads: 1e-2, schedule: cosine, warmup_steps: 10, max_steps: 200,
//           batch_size: 8, grad_accum: 1, max_grad_norm: 1.0}
//   eval: {every: 50, patience: 3}
//   multitask: {sampling: temperature, temperature: 2.0}
//   continual: {enabled: false, full_finetune_baseline: false, shared_module_baseline: false}
//   checkpoint: {every: 50, keep: 2}
//   compose: "fuse(a, b)"                     # optional composition spec over the modules
//   metadata: [{field: language, values: [en, de, fr]}]   # per-example routing ids
//
// Routing: every batch row carries "task" (its task's index in `tasks`) and, per `metadata`
// field, the index of the row's value in that field's `values`. POLY / MODULA_HYPER_LORA
// modules read the entry their config's `routing_key` names (default "task"), and
// route(<key>, m_0, ..., m_{V-1}) in `compose` sends each row to m_<id> (docs/training.md,
// "Routing by metadata").
//
// parse_train_config validates once and throws ConfigError naming the source, the key
// path ("tasks[1].type") and what was expected.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "modula/util/error.h"

namespace modula::train {

// Every error of the training layer; what() starts with "[train] ".
struct TrainError : std::runtime_error {
  using std::runtime_error::runtime_error;
};
// A bad config field throws modula::ConfigError (util/error.h); what() starts with
// "[train] " and names the file and key path.

enum class TaskType { CausalLM, MaskedLM, SequenceClassification, TokenClassification };
TaskType task_type_from_string(const std::string& s);  // throws ConfigError listing the types
std::string to_string(TaskType t);

struct ModuleSpec {
  std::string name;       // adapter name, unique in the run
  nlohmann::json config;  // fresh module: a PEFT-style adapter_config (add_adapter)
  std::string path;       // or an existing module folder (load_adapter)
  bool trainable = true;
};

// A per-example metadata field the modules and route(...) can route by: each record's value
// (a string or an integer, compared as its string form) becomes its index in `values`.
struct MetadataField {
  std::string name;                 // the record field, and the RoutingContext key ("task" is reserved)
  std::vector<std::string> values;  // default: the sorted set seen in all tasks' train records
};

struct TaskConfig {
  std::string name;
  TaskType type = TaskType::SequenceClassification;
  std::string train, eval;  // JSONL / CSV / TSV files (or in-memory data given to Trainer)
  // Field names in the records.
  std::string text_field = "text";
  std::string text_pair_field;          // optional second segment (seq. classification)
  std::string label_field = "label";    // class name or integer
  std::string prompt_field = "prompt";  // causal LM: loss on the completion only
  std::string completion_field = "completion";
  std::string tokens_field = "tokens";  // token classification: list of words
  std::string tags_field = "tags";      // and their tags
  std::vector<std::string> labels;      // class / tag names; default: sorted set seen in train
  int64_t max_length = 128;
  double mlm_probability = 0.15;
  std::vector<std::string> modules;  // modules enabled for this task; empty = all
  double weight = 1.0;               // loss weight
};

struct OptimConfig {
  double lr = 1e-3;
  // Per-group learning rates; unset = lr.
  std::optional<double> lr_modules, lr_routers, lr_heads, lr_backbone;
  double weight_decay = 0.0;
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
  std::string schedule = "constant";  // constant | linear | cosine (after linear warmup)
  int64_t warmup_steps = 0;
  double min_lr_ratio = 0.0;  // cosine/linear floor, fraction of the peak lr
  int64_t max_steps = 100;    // optimizer steps (per task in continual learning)
  int64_t batch_size = 8;
  int64_t grad_accum = 1;
  double max_grad_norm = 0.0;  // 0 = no clipping
  std::string bf16 = "auto";   // auto (on for CUDA) | true | false: autocast compute dtype
  // Recompute each layer's activations in the backward pass instead of keeping them
  // (Backbone::set_activation_checkpointing): less memory, one more forward per step.
  bool activation_checkpointing = false;
};

struct EvalConfig {
  int64_t every = 0;     // evaluate every N optimizer steps (0 = only at the end)
  int64_t patience = 0;  // early stopping after N evaluations without improvement (0 = off)
  int64_t batch_size = 16;
  int64_t max_examples = 0;  // 0 = all
};

struct MultitaskConfig {
  std::string sampling = "proportional";  // proportional | temperature | uniform
  double temperature = 2.0;               // p_i ∝ n_i^(1/T)
};

struct ContinualConfig {
  bool enabled = false;                 // tasks in sequence, a new module per task
  bool full_finetune_baseline = false;  // also run the same sequence with the backbone trainable
  bool shared_module_baseline = false;  // also run it with one module (`module`) trained on every task in turn
  nlohmann::json module;                // the per-task module config (default: LoRA r=8 all-linear)
};

struct CheckpointConfig {
  int64_t every = 0;  // optimizer steps between checkpoints (0 = none)
  int64_t keep = 2;   // newest complete checkpoints kept (>= 1)
};

struct TrainConfig {
  std::string source = "<memory>";  // file the config came from (error messages)
  std::string model;                // HF model folder (or config.json when init == "random")
  std::string tokenizer;            // default: model folder
  std::string init = "pretrained";  // pretrained | random (pretraining from scratch)
  double init_std = 0.02;
  std::string output = "runs/modula";
  std::string device = "cpu";  // cpu | cuda | cuda:N
  uint64_t seed = 0;
  bool train_backbone = false;
  bool save_model = false;  // write the (full) backbone to output/model (pretraining)
  std::vector<ModuleSpec> modules;
  // A composition spec over `modules` (docs/composition.md), in its canonical text form
  // (the config may give the text or the JSON/YAML mapping form); empty = none. Members of
  // fuse(...) are frozen and the fusions train; route(task, m_0, m_1, ...) sends each batch
  // of task i (its index in `tasks`) to m_i, route(<metadata field>, ...) each row by its value.
  std::string compose;
  std::vector<TaskConfig> tasks;
  // Per-example routing fields, in the order of Example::metadata / Batch::metadata. The
  // trainer fills values left empty from the train records (Trainer::config() has them).
  std::vector<MetadataField> metadata;
  OptimConfig optim;
  EvalConfig eval;
  MultitaskConfig multitask;
  ContinualConfig continual;
  CheckpointConfig checkpoint;
  int64_t log_every = 1;  // steps between on_step callbacks / metrics lines

  const TaskConfig& task(const std::string& name) const;  // throws ConfigError
};

// Checks what routes by task or metadata: each POLY / MODULA_HYPER_LORA module's
// `routing_key` (default "task") is "task" or a field in `metadata`, and, for fields whose
// values are known, the module's n_tasks / num_tasks covers them; each route(<key>, ...) in
// `compose` routes by "task", a declared field or a learned router, with one argument per
// task / value. With `folders`, module folders' adapter_config.json are read too.
// parse_train_config runs it without folders; the trainer again once values are known.
// Throws ConfigError naming the source and the key.
void check_routing(const TrainConfig& c, bool folders);

// Validates and fills defaults. `source` names the file in messages.
TrainConfig parse_train_config(const nlohmann::json& j, const std::string& source = "<memory>");
// .yaml/.yml via yaml-cpp, .json otherwise. Relative paths in the file (model, tokenizer,
// data, module folders, output) are resolved against the config file's folder.
TrainConfig load_train_config(const std::string& path);

}  // namespace modula::train
