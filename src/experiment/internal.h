// Internal: what the experiments share — sizes by mode, the tasks built from package data,
// the pretrained backbone, and the run configs handed to the one trainer (train/trainer.h).
#pragma once

#include <chrono>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "modula/experiment/experiment.h"
#include "modula/train/config.h"
#include "modula/train/trainer.h"

namespace modula::experiment::detail {

using json = nlohmann::json;

// Sizes of one mode (full or quick); every method of an experiment gets the same.
struct Sizes {
  int64_t train_per_class = 100, eval_per_class = 40;
  int64_t max_length = 64;
  int64_t steps_per_task = 150, batch_size = 16;
  double lr_modules = 2e-3, lr_full = 2e-4, lr_heads = 5e-3;
  int64_t lora_r = 4;
  // The backbone: a BERT pretrained by MLM on the tasks' training text.
  int64_t vocab_size = 4000, hidden = 128, layers = 3, heads = 4, intermediate = 256;
  int64_t pretrain_steps = 1200, pretrain_batch = 32;
  static Sizes of(const ExperimentOptions& o);
};

// A labelled classification task (records {"text", "label"}).
struct Task {
  std::string name;
  std::vector<std::string> labels;
  std::vector<json> train, eval;
  std::string note;   // source, classes, sizes
  double chance = 0;  // accuracy of the majority class on eval
};

// language (fortunes in 7 languages), spam (SpamAssassin), reuters (grain vs other
// Reuters-21578 news), topic (4 English fortune files): balanced classes, split with a fixed
// seed (the same for every method and seed of the experiment).
std::vector<Task> classification_tasks(const ExperimentOptions& o, const Sizes& z);

// The folder of a BERT (config.json, model.safetensors, tokenizer.json) pretrained by MLM
// on the tasks' training text; built once per sizes and data under <output>/backbone-*.
// `name` names the folder (<output>/backbone-<name>-full|quick): experiments on other text
// pretrain their own.
std::string pretrained_backbone(const ExperimentOptions& o, const Sizes& z, const std::vector<Task>& tasks,
                                const Progress& progress, const std::string& name = "tasks");

// A classification run over `tasks` on the backbone: every task with its own head, eval
// on the task's eval split, the experiment's optimisation (cosine, 10% warmup, clipping).
train::TrainConfig run_config(const Sizes& z, const std::string& model, const std::vector<Task>& tasks,
                              const std::string& output, uint64_t seed, int64_t steps);
train::Datasets datasets(const std::vector<Task>& tasks);
json lora(int64_t r, double alpha = 0);  // LoRA r on every linear layer, alpha (0 = 2r)

// Runs the trainer, forwarding its phase changes as progress lines.
train::TrainResult run(const train::TrainConfig& c, const train::Datasets& d, const Progress& progress,
                       const std::string& label);

// The experiments, one file each.
ExperimentResult continual(const ExperimentOptions& o, const Progress& progress);
ExperimentResult interference(const ExperimentOptions& o, const Progress& progress);
ExperimentResult merging(const ExperimentOptions& o, const Progress& progress);
ExperimentResult madx(const ExperimentOptions& o, const Progress& progress);
ExperimentResult generalisation(const ExperimentOptions& o, const Progress& progress);
ExperimentResult moe(const ExperimentOptions& o, const Progress& progress);

// Wall seconds since t0 (each method's time in the table).
inline double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

inline MethodResult method_named(std::string name) {
  MethodResult m;
  m.method = std::move(name);
  return m;
}

// The findings' noise rule: `better` when gap > 2 × noise and > min_gap, `worse` for the
// mirror image, otherwise "no difference beyond seed noise" (+ `suffix`).
inline std::string verdict(double gap, double noise, const std::string& better, const std::string& worse,
                           double min_gap = 0.01, const std::string& suffix = "") {
  return gap > 2 * noise && gap > min_gap     ? better
         : gap < -2 * noise && gap < -min_gap ? worse
                                              : "no difference beyond seed noise" + suffix;
}

std::string fmt(double v, int precision = 3);        // "–" for NaN
std::string mean_std(const std::vector<double>& v);  // "0.812 ± 0.013"

}  // namespace modula::experiment::detail
