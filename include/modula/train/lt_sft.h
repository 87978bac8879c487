// LT-SFT (Ansell et al. 2022, "Composable Sparse Fine-Tuning for Cross-Lingual Transfer"):
// the training procedure that produces a SparseDiff (modula/modules/sparse_ft.h). Both of
// its phases run the one training loop (modula/train/loop.h).
//
//   auto diff = modula::lt_sft(*model, SparseDiffOptions().target_parameters({"re:.*proj\\.weight"}).density(0.01),
//                              LtSftOptions().full_steps(100).sparse_steps(100).lr(1e-4), step);
//   diff->apply(*model);  save_sparse_diff(diff, "out/sft");
#pragma once

#include <functional>
#include <vector>

#include "modula/modules/sparse_ft.h"
#include "modula/train/loop.h"

namespace modula {

using SftOptimizer = train::OptimizerKind;  // AdamW, Adam, SGD

struct LtSftOptions {
  TORCH_ARG(int64_t, full_steps) = 100;    // phase 1: dense fine-tuning of the chosen parameters
  TORCH_ARG(int64_t, sparse_steps) = 100;  // phase 2: only the masked entries
  TORCH_ARG(SftOptimizer, optimizer) = SftOptimizer::AdamW;
  TORCH_ARG(double, lr) = 1e-4;
  TORCH_ARG(double, weight_decay) = 0.0;   // AdamW only (phase 2 decays φ towards 0, i.e. θ towards θ₀)
  TORCH_ARG(double, max_grad_norm) = 0.0;  // 0 = no clipping

 public:
  void validate() const;  // std::invalid_argument naming the bad field
  // The loop options of one phase (constant lr, no accumulation).
  train::LoopOptions loop_options(int64_t steps, const std::string& phase) const;
};

// Losses seen during lt_sft, one per step.
struct LtSftReport {
  std::vector<double> full_losses, sparse_losses;
};

// Phase 1 fine-tunes the chosen parameters fully for full_steps, then keeps the top-K
// entries of |θ₁ − θ₀| over all of them jointly, resets the parameters to θ₀, and phase 2
// trains only those entries for sparse_steps. `step` runs the user's forward on `model`
// and returns a scalar loss (router aux losses of `model` are added); lt_sft does backward
// and the optimizer step. Returns φ (detached; the backbone holds θ₀ and its requires_grad
// flags as before). Throws std::runtime_error (train::TrainError) for a NaN/inf loss or
// gradient norm, or a loss that does not depend on the trained parameters (weights
// restored to θ₀).
SparseDiff lt_sft(Backbone& model, const SparseDiffOptions& options, const LtSftOptions& train,
                  const std::function<torch::Tensor()>& step, LtSftReport* report = nullptr);

}  // namespace modula
