// Internal: what every quickstart experiment shares — the tiny backbone, the training call
// (the one loop, train/loop.h), held-out accuracy, module naming, the run's context.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "modula/backbone/backbone.h"
#include "modula/train/loop.h"
#include "quickstart/quickstart.h"

namespace modula::train::quickstart_detail {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

[[noreturn]] void bad(const std::string& msg);  // std::invalid_argument "[quickstart] ..."
double since(Clock::time_point t0);
std::string fmt(double v, int precision = 3);  // "–" for NaN

// The tiny Llama: HF config built in code, random init.
std::shared_ptr<Backbone> build_backbone(const QuickstartOptions& o, const SymbolVocab& vocab, int64_t max_len);
// A fresh backbone with the weights of `src` (each method starts from the same pretrained one).
std::shared_ptr<Backbone> copy_backbone(Backbone& src);

int64_t count(const std::vector<torch::Tensor>& params);
std::vector<torch::Tensor> backbone_parameters(Backbone& model);

// Trains `groups` (each with its peak lr) for `steps` over batches from `draw` with the
// one training loop: AdamW, linear warmup (5%), then cosine decay to 10% of each group's
// lr, gradients clipped to norm 1; the loss is the answer loss plus the model's router aux
// losses. `curve` gets the mean answer loss of every log_every window, `aux_curve` (when
// given) the mean router loss. The groups are trainable during the call only.
void fit(Backbone& model, const std::vector<ParamGroup>& groups, const std::function<TaskBatch()>& draw, int64_t steps,
         int64_t log_every, LossCurve& curve, const std::string& phase, const Progress& progress,
         LossCurve* aux_curve = nullptr);
// One group.
void fit(Backbone& model, std::vector<torch::Tensor> params, const std::function<TaskBatch()>& draw, int64_t steps,
         double lr, int64_t log_every, LossCurve& curve, const std::string& phase, const Progress& progress);

// Held-out exact-match accuracy of the model as it is (its enabled modules) on one batch.
double accuracy(Backbone& model, const TaskBatch& eval);

json lora_config(const QuickstartOptions& o);
// Module names cannot contain dots; task names may contain '+'.
std::string module_name(const std::string& task);
double mean(const std::vector<double>& v);
std::vector<int64_t> iota_ids(size_t n);

// Parameter values, to restore a module before adapting it to another task.
std::vector<torch::Tensor> snapshot(const std::vector<torch::Tensor>& params);
void restore(const std::vector<torch::Tensor>& params, const std::vector<torch::Tensor>& values);

struct Context {
  const QuickstartOptions& o;
  const Progress& progress;
  TaskSampler& sampler;
  std::shared_ptr<Backbone> pretrained;
  void say(const std::string& s) const {
    if (progress) progress(s);
  }
};

// Per-task evaluation sets (held-out inputs), the same for every method.
std::vector<TaskBatch> eval_sets(const QuickstartOptions& o, const std::vector<Task>& tasks, bool with_marker);

// The experiments, one file each.
ExperimentResult continual(Context& c);       // (a)
ExperimentResult interference(Context& c);    // (b)
ExperimentResult generalisation(Context& c);  // (c)
ExperimentResult moe(Context& c);             // (d)

}  // namespace modula::train::quickstart_detail
