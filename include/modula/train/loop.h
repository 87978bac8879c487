// The training loop every trainer in modula runs (`modula train`, LT-SFT, the quickstart):
// parameter groups with their own peak lr, linear warmup then constant/linear/cosine decay,
// gradient accumulation, clipping, router auxiliary losses, NaN/inf checks.
//
//   LoopOptions o;
//   o.schedule = Schedule::Cosine, o.warmup_steps = 10, o.total_steps = 200, o.max_grad_norm = 1.0;
//   TrainLoop loop({{lora.parameters(), 1e-3}, {router_params, 1e-2}}, o, model.get());
//   loop.run([&](int64_t micro) { return loss_of(next_batch()); },
//            [&](const StepStats& s) { log(s.step, s.loss, s.lr, s.grad_norm); });
//
// One optimizer step (TrainLoop::step):
//   1. gradients of every group set to none (a parameter without a gradient this step is
//      left alone by the optimizer);
//   2. for each of grad_accum micro-batches: L = loss(micro) + Σ router aux losses of the
//      model's forward, backward of L · weight / grad_accum;
//   3. sync_gradients(params) when set (data parallel: the average over ranks, distributed.h),
//      then ‖g‖₂ over all groups, clipped to max_grad_norm when > 0;
//   4. lr of group g = peak_g · lr_factor(schedule, step, warmup, total), optimizer step.
// A NaN/inf loss or gradient norm throws TrainError naming the label, the step and the
// source of the micro-batch; the step is not taken.
#pragma once

#include <torch/torch.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "modula/train/schedule.h"

namespace modula::train {

enum class OptimizerKind { AdamW, Adam, SGD };

// Parameters that share a peak learning rate.
struct ParamGroup {
  std::vector<torch::Tensor> params;
  double lr = 1e-3;  // peak; the schedule scales it
};

struct LoopOptions {
  OptimizerKind optimizer = OptimizerKind::AdamW;
  double weight_decay = 0.0;                      // AdamW: decoupled; Adam, SGD: L2 in the gradient
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;  // AdamW, Adam
  Schedule schedule = Schedule::Constant;
  int64_t warmup_steps = 0;
  int64_t total_steps = 0;        // schedule length, and the steps run() takes
  double min_lr_ratio = 0.0;      // linear/cosine floor, fraction of the peak lr
  int64_t grad_accum = 1;         // micro-batches per optimizer step
  double max_grad_norm = 0.0;     // 0 = no clipping
  std::string label = "[train]";  // starts every error message, e.g. "[train] continual/1"
  // Called once per step after the micro-batches' backward, before the norm and clipping,
  // with every group's parameters (data parallel: Distributed::average_gradients).
  std::function<void(const std::vector<torch::Tensor>& params)> sync_gradients;

  // Throws std::invalid_argument naming the bad field.
  void validate() const;
};

// The loss of one micro-batch, as the loss function returns it. A torch::Tensor converts
// implicitly: `[&](int64_t) { return loss; }` is a LossFn.
struct MicroLoss {
  MicroLoss(torch::Tensor loss_, double weight_ = 1.0, std::string source_ = {})
      : loss(std::move(loss_)), weight(weight_), source(std::move(source_)) {}
  torch::Tensor loss;  // scalar; router aux losses are added by the loop
  double weight;       // its gradient is scaled by weight / grad_accum (multi-task weights)
  std::string source;  // named in errors, e.g. "task 'sst2'"
};
using LossFn = std::function<MicroLoss(int64_t micro)>;

// What one optimizer step did.
struct StepStats {
  int64_t step = 0;      // optimizer steps done, this one included
  double loss = 0;       // mean over the micro-batches of loss (unweighted, without aux)
  double aux_loss = 0;   // mean over the micro-batches of the router aux losses
  double lr = 0;         // group 0's lr for this step
  double grad_norm = 0;  // before clipping
};
using StepFn = std::function<void(const StepStats&)>;

class TrainLoop {
 public:
  // Validates the options and groups (non-empty, lr > 0) and builds the optimizer. With
  // `model`, the aux losses of its routers (RouterImpl::aux_loss, e.g. MoE load balancing)
  // are cleared before and added after every micro-batch; the model must outlive the loop
  // and its routers must not change.
  TrainLoop(std::vector<ParamGroup> groups, LoopOptions options, torch::nn::Module* model = nullptr);
  ~TrainLoop();
  TrainLoop(TrainLoop&&) noexcept;
  TrainLoop& operator=(TrainLoop&&) noexcept;

  // One optimizer step over options.grad_accum micro-batches of `loss`.
  StepStats step(const LossFn& loss);
  // Steps until options.total_steps are done, on_step after each.
  void run(const LossFn& loss, const StepFn& on_step = {});

  int64_t steps_done() const;
  // Resume: the next step is `steps` (schedule position); restore optimizer() separately.
  void set_steps_done(int64_t steps);
  // The multiplier of the peak lrs at step `step` (0-based).
  double lr_factor_at(int64_t step) const;
  int64_t num_parameters() const;  // over all groups
  const LoopOptions& options() const;
  // For checkpoints: optimizer().save(archive) / optimizer().load(archive).
  torch::optim::Optimizer& optimizer();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace modula::train
