// What `modula train` leaves in its output folder, read back: the resolved config
// (run_config.json) and the task heads (heads.safetensors + heads.json).
//
//   out/run_config.json      the run's config after defaults, absolute paths and metadata
//                            values resolved; load_train_config reads it as any config
//   out/heads.safetensors    "<task>.weight" [labels, H], "<task>.bias" [labels]
//   out/heads.json           {"<task>": {"type": "sequence_classification", "labels": [...]}}
//   out/modules/<name>/      trained modules (PEFT folders); out/compose/, out/model/
//
//   auto run = modula::train::load_run("runs/sent");        // or the run's config file
//   auto heads = modula::train::load_heads(run.dir + "/heads.safetensors");
#pragma once

#include <torch/torch.h>

#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "modula/train/config.h"

namespace modula::train {

inline constexpr const char* kRunConfigFile = "run_config.json";

// The config as parse_train_config reads it back, with every path made absolute.
nlohmann::json to_json(const TrainConfig& config);

struct RunOutput {
  TrainConfig config;
  std::string dir;  // the output folder
};
// A run output folder (with run_config.json) or a run config file (.yaml/.yml/.json; its
// `output` is the folder). Throws ConfigError naming the folder or file.
RunOutput load_run(const std::string& run_or_config);

// The module a continual run trains for `task` (output/modules/<name>): the task's name
// with '.' replaced by '_'.
std::string continual_module_name(const std::string& task);

// One task's head as the trainer saved it.
struct RunHead {
  TaskType type = TaskType::SequenceClassification;
  std::vector<std::string> labels;
  torch::Tensor weight, bias;  // [labels, H], [labels]; undefined for tasks without a head
};
// heads.safetensors and heads.json beside it, by task name. Throws ConfigError naming the
// file when either is missing or they disagree.
std::map<std::string, RunHead> load_heads(const std::string& heads_file);

}  // namespace modula::train
