// Polytropon / MHR (Ponti et al. 2022; Caccia et al. 2022) at a Linear site, PEFT POLY
// semantics: n_skills LoRA skills per split, a task-to-skill routing (routing/poly.h) and
// parameter aggregation per example:
//
//   A_n[q] = Σ_s w_n[q, s] A[q, s]    (A[q, s]: [in / n_splits, r], split q reads input block q)
//   B_n[q] = Σ_s w_n[q, s] B[q, s]    (B[q, s]: [r, out / n_splits], split q writes output block q)
//   y ← y + (α / r) x A_n B_n        (α = lora_alpha, default 1: PEFT POLY's 1 / r)
//
// Parameters keep PEFT's names and shapes: poly_lora_A [n_splits, n_skills, in/n_splits, r],
// poly_lora_B [n_splits, n_skills, r, out/n_splits], poly_router.module_logits.
//
//   auto ctx = std::make_shared<modula::RoutingContext>();
//   auto poly = modula::load_poly_adapter(*model, "adapters/poly", ctx);
//   ctx->set("task", task_ids);   // [B]
//   auto out = model->forward(in);
#pragma once

#include "modula/backbone/backbone.h"
#include "modula/backbone/layers.h"
#include "modula/modules/adapter.h"
#include "modula/routing/algorithm1.h"
#include "modula/routing/poly.h"

namespace modula {

struct PolyLoraOptions {
  PolyLoraOptions(int64_t in, int64_t out) : in_features_(in), out_features_(out) {}
  TORCH_ARG(int64_t, in_features);
  TORCH_ARG(int64_t, out_features);
  TORCH_ARG(int64_t, r) = 8;
  TORCH_ARG(int64_t, n_tasks) = 1;
  TORCH_ARG(int64_t, n_skills) = 4;
  TORCH_ARG(int64_t, n_splits) = 1;
  TORCH_ARG(bool, init_weights) = true;   // B = 0 (identity at start); false: B kaiming-uniform
  TORCH_ARG(std::string, key) = "task";   // RoutingContext entry with the task ids
  TORCH_ARG(bool, routing_noise) = true;  // PolyRouterOptions::noise
  // α of the scaling α / r (modula extension; PEFT POLY scales by 1 / r, i.e. α = 1). A LoRA
  // with lora_alpha 2r scales by 2, 8× PEFT POLY's at r = 4: under Adam its update grows 8×
  // faster, which is why Polytropon at α = 1 underfits beside such LoRAs (docs/experiments.md).
  TORCH_ARG(double, lora_alpha) = 1.0;

 public:
  void validate() const;  // std::invalid_argument naming the bad field
};

// The site module is its own bank of n_splits · n_skills skills (algorithm1.h): Polytropon
// = this bank + PolyRouter + Aggregation::ParameterAverage.
class PolyLoraImpl : public SiteModule, public ModuleBank {
 public:
  PolyLoraImpl(const PolyLoraOptions& options, std::shared_ptr<RoutingContext> context);
  void reset();
  // Algorithm 1: w = poly_router(task ids); merged skills A_n, B_n per example; y + x A_n B_n / r.
  torch::Tensor transform_output(const torch::Tensor& x, const torch::Tensor& y, const LinearImpl& base) override;
  // The per-example module for allocation w [N, n_splits, n_skills]: A [N, in, r], B [N, r, out].
  std::pair<torch::Tensor, torch::Tensor> combine_skills(const torch::Tensor& w) const;

  // ModuleBank: x A_n B_n / r for weights w [N, n_splits · n_skills] (split-major).
  torch::Tensor averaged(const SiteInput& in, const torch::Tensor& w) override;
  // Skills are only defined through their parameter average (PEFT POLY): these throw.
  torch::Tensor selected(const SiteInput& in, const torch::Tensor& idx, const torch::Tensor& w) override;
  torch::Tensor mixed(const SiteInput& in, const torch::Tensor& w) override;
  int64_t num_modules() const override { return options.n_splits() * options.n_skills(); }
  std::string kind() const override { return "poly bank"; }

  bool mergeable() const override { return false; }
  void merge(LinearImpl& base) override;
  void unmerge(LinearImpl& base) override;

  PolyLoraOptions options;
  torch::Tensor poly_lora_A, poly_lora_B;
  PolyRouter poly_router = nullptr;
};
TORCH_MODULE(PolyLora);

// Attaches freshly initialised Poly modules for a PEFT POLY config (r, n_tasks, n_skills,
// n_splits, poly_type "poly", target_modules; modula's routing_key: the RoutingContext
// entry with the ids, default "task"). Throws std::invalid_argument naming the bad key or site.
Adapter add_poly_adapter(Backbone& model, const nlohmann::json& config, std::shared_ptr<RoutingContext> context,
                         const std::string& name = "default");
// Loads a PEFT POLY folder; every tensor must find its module and shape. save_adapter()
// writes it back in PEFT's layout.
Adapter load_poly_adapter(Backbone& model, const std::string& dir, std::shared_ptr<RoutingContext> context,
                          const std::string& name = "default");

// MHR-z (Caccia et al. 2022): freeze the skills, train only the routing logits (a new
// task's allocation). Returns the parameters left trainable.
std::vector<torch::Tensor> mhr_z(Adapter& poly);
// MHR-μ (Caccia et al. 2022): average the skills into one LoRA module per site
// (uniform allocation, A = mean_s A[q, s], B = mean_s B[q, s], s = 1/r), attached as a
// LORA adapter named `name` that save_adapter writes for PEFT. The Poly adapter stays.
Adapter mhr_mu(Backbone& model, const Adapter& poly, const std::string& name = "mhr_mu");

}  // namespace modula
