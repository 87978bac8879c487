// Internal: the Trainer's state and its parts, defined in
//   trainer_build.cpp  data, backbone + modules + composition + heads of a stage, activation;
//   trainer_phase.cpp  one phase: parameter groups, the training loop, evaluation, checkpoints;
//   trainer.cpp        stages (main / continual / baseline), outputs, Trainer::run.
#pragma once

#include <chrono>
#include <cmath>
#include <fstream>
#include <functional>
#include <initializer_list>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "metrics_log.h"
#include "modula/composition/apply_spec.h"
#include "modula/composition/registry.h"
#include "modula/train/checkpoint.h"
#include "modula/train/distributed.h"
#include "modula/train/loop.h"
#include "modula/train/trainer.h"
#include "modula/util/error.h"
#include "modula/util/fs.h"
#include "task_runtime.h"

namespace modula::train {
namespace detail {

inline constexpr std::string_view kTag = "train";  // TrainError("[train] ...")

inline double mean_of(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  return v.empty() ? 0.0 : s / static_cast<double>(v.size());
}

struct Phase {
  std::string stage;  // main | continual | baseline
  int64_t index = 0;  // within the stage
  std::vector<size_t> tasks;
  std::set<std::string> train_adapters;
  bool backbone = false;
  int64_t global_offset = 0;  // checkpoint numbering: global step = offset + step
  int64_t max_steps = 0;      // 0 = optim.max_steps
  int64_t steps(int64_t configured) const { return max_steps > 0 ? max_steps : configured; }
  std::string label() const {
    if (stage == "main") return "train";
    return stage == "lt_sft" ? stage : stage + "/" + std::to_string(index);
  }
};

struct PhaseOutcome {
  int64_t steps = 0;
  double last_loss = 0;
  bool stopped_early = false;
};

// What a phase's checkpoints carry besides tensors, optimizer and data positions.
struct PhaseProgress {
  double best = INFINITY;  // best mean eval loss
  int64_t bad_evals = 0;   // evaluations since the best
  double last_loss = 0;
  bool stopped = false;  // early stopping
  nlohmann::json to_json() const {
    using json = nlohmann::json;
    return {
        {"best", std::isfinite(best) ? json(best) : json(nullptr)}, {"bad_evals", bad_evals}, {"last_loss", last_loss}};
  }
};

// Throughput and ETA of a phase since it started (or resumed).
struct PhaseClock {
  using Clock = std::chrono::steady_clock;
  Clock::time_point start = Clock::now();
  int64_t first_step = 0, tokens = 0;
  std::string task;  // of the last micro-batch
  double elapsed() const { return std::chrono::duration<double>(Clock::now() - start).count(); }
};

}  // namespace detail

struct Trainer::State {
  using json = nlohmann::json;
  using Phase = detail::Phase;
  using TaskRuntime = detail::TaskRuntime;

  TrainConfig cfg;
  std::unique_ptr<text::Tokenizer> tokenizer;
  io::ModelConfig model_config;
  torch::Device device{torch::kCPU};
  bool autocast = false;
  std::vector<TaskRuntime> prototypes;  // encoded data, no heads

  // The stage being run.
  std::shared_ptr<Backbone> model;
  std::shared_ptr<RoutingContext> routing;  // per-row ids the modules route by (task, metadata)
  std::vector<Adapter> adapters;
  std::vector<bool> adapter_trainable;
  std::vector<TaskRuntime> tasks;
  std::map<size_t, std::vector<std::string>> enabled;  // task -> adapters on for its batches
  bool backbone_trainable = false;
  // cfg.compose applied over the adapters (main stage): its members are never switched by
  // activate() (the composites run them); members of fuse(...) stay frozen.
  std::optional<Composition> composition;
  std::set<std::string> composed, fused;
  bool routes_by_task = false;

  Callbacks cb;
  // Data parallel (distributed.h): null or world size 1 = one process.
  std::shared_ptr<Distributed> dist;
  double shard_loss = 0;  // this step: Σ over micro-batches of this rank's share of the global mean loss
  bool parallel() const { return dist && dist->world_size() > 1; }
  bool writes() const { return !dist || dist->is_main(); }  // rank 0 writes outputs, metrics, checkpoints
  // Where small collectives' tensors live: NCCL reduces on the GPU only.
  torch::Device comm_device() const { return dist && dist->backend() == "nccl" ? device : torch::Device(torch::kCPU); }
  detail::MetricsLog metrics;  // metrics.jsonl + metrics.csv (rank 0)
  std::optional<LoadedCheckpoint> resume_from;
  json results = json::object();  // finished stages' results (kept in checkpoints)

  void note(const std::string& s) const {
    if (cb.on_message) cb.on_message(s);
  }
  std::string out(const std::string& name) const { return fs::join(cfg.output, name); }

  // ---- construction, stages (trainer_build.cpp) -----------------------------------------
  void load_data(const Datasets& data);
  void build(bool train_backbone, const std::vector<ModuleSpec>& specs, bool compose = false);
  // Applies cfg.compose over the run's adapters (names = the config's module names).
  void apply_compose();
  Adapter* adapter(const std::string& name);
  detail::InputModules activate(size_t task);
  void route_rows(size_t ti, const Batch& b);

  // ---- one phase (trainer_phase.cpp) ------------------------------------------------------
  std::vector<std::pair<std::string, torch::Tensor>> named_state();
  std::vector<std::pair<std::string, torch::Tensor>> state_dict_params();
  std::vector<ParamGroup> param_groups(const Phase& ph);
  LoopOptions loop_options(const Phase& ph) const;
  detail::PhaseOutcome run_phase(const Phase& ph);
  MicroLoss micro_loss(const Phase& ph, const std::vector<double>& probs, int64_t step, int64_t micro,
                       detail::PhaseClock& clock);
  // Continues a phase from resume_from when it was saved in this phase: tensors, RNG, data
  // positions, optimizer state, step, early-stopping state.
  void resume_phase(const Phase& ph, TrainLoop& loop, detail::PhaseProgress& pp);
  // Evaluation every eval.every steps with early stopping on the mean eval loss.
  void maybe_evaluate(const Phase& ph, int64_t step, detail::PhaseProgress& pp);
  double eval_tasks(const Phase& ph, int64_t step);
  std::map<std::string, double> evaluate(size_t ti);
  void log_line(json j);
  void save(const Phase& ph, int64_t step, torch::optim::Optimizer& opt, const json& loop);
  void restore_tensors(const LoadedCheckpoint& ck);

  // ---- outputs, stages (trainer.cpp) ------------------------------------------------------
  void save_heads();
  void save_modules(const std::function<bool(size_t)>& which);
  std::string peft_task_type(const std::string& adapter) const;
  void main_stage(TrainResult& r);
  int64_t dense_phase(const Phase& main);  // LT-SFT's first phase; returns its steps
  ContinualResult sequence_stage(const std::string& stage, int64_t stage_offset);
};

}  // namespace modula::train
