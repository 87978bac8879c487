// Polytropon routing (Ponti et al. 2022) with its multi-head variant MHR (Caccia et al.
// 2022), PEFT POLY semantics: a learned task-to-skill allocation per split (head).
//
//   Z = module_logits[task] ∈ R^{n_splits × n_skills}
//   train: ŵ ~ RelaxedBernoulli(τ = 1, logits Z)  (Gumbel-sigmoid, reparameterised)
//          or ŵ = σ(Z) with noise(false) (modula: training routes as evaluation does)
//   eval:  ŵ = σ(Z)
//   w[q, s] = ŵ[q, s] / (Σ_s' ŵ[q, s'] + 1e-12)
//
// Task ids come from the RoutingContext (key "task" by default), one per row.
// route() returns weights [N, n_splits · n_skills] (split-major), each split summing to 1.
#pragma once

#include "modula/routing/router.h"

namespace modula {

struct PolyRouterOptions {
  PolyRouterOptions(int64_t n_tasks, int64_t n_skills) : n_tasks_(n_tasks), n_skills_(n_skills) {}
  TORCH_ARG(int64_t, n_tasks);
  TORCH_ARG(int64_t, n_skills);
  TORCH_ARG(int64_t, n_splits) = 1;      // MHR heads; 1 = Polytropon
  TORCH_ARG(std::string, key) = "task";  // RoutingContext entry with the task ids
  // Training samples ŵ from RelaxedBernoulli (PEFT, Ponti et al. 2022); false: σ(Z) as at
  // evaluation. The sampled allocation is a fresh random skill mixture each step (logistic
  // noise of scale 1 on Z), which costs training-task accuracy (docs/experiments.md).
  TORCH_ARG(bool, noise) = true;

 public:
  void validate() const;  // std::invalid_argument naming the bad field
};

class PolyRouterImpl : public RouterImpl {
 public:
  PolyRouterImpl(const PolyRouterOptions& options, std::shared_ptr<RoutingContext> context);
  // PEFT init: module_logits ~ U(-1e-3, 1e-3).
  void reset();
  Routing route(const torch::Tensor& x) override;
  int64_t num_modules() const override { return options.n_splits() * options.n_skills(); }
  // The normalised allocation [N, n_splits, n_skills] for task ids [N].
  torch::Tensor skill_weights(const torch::Tensor& task_ids);

  PolyRouterOptions options;
  std::shared_ptr<RoutingContext> context;
  torch::Tensor module_logits;  // [n_tasks, n_splits · n_skills]
};
TORCH_MODULE(PolyRouter);

// A reparameterised RelaxedBernoulli(temperature, logits) sample (Maddison et al. 2017):
// σ((logits + log u − log(1 − u)) / temperature), u ~ U(0, 1).
torch::Tensor relaxed_bernoulli(const torch::Tensor& logits, double temperature = 1.0);

}  // namespace modula
