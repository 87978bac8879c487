// A mixture-of-experts feed-forward block (Shazeer et al. 2017; Switch, Fedus et al. 2022;
// Mixtral, Jiang et al. 2024) as a block-site module that replaces the sub-layer's FFN:
//
//   y(x) = Σ_{e ∈ top-k(x)} g_e(x) · E_e(x)          (weighted; g from the router)
//   y(x) = Σ_{e ∈ top-k(x)} E_e(x)                   (unweighted selection, MoEfication)
//   E_e(x) = W_down,e (act(W_gate,e x + b) ⊙ (W_up,e x + b)) + b     (gated, SwiGLU)
//   E_e(x) = W_down,e act(W_up,e x + b) + b                          (plain, GELU/ReLU)
//
// Dispatch: the token→expert assignments are sorted by expert (first choices before
// second choices, then token order: GShard priority) and each expert runs once on its
// contiguous segment. With a capacity factor C each expert takes at most
// capacity = ceil(C · tokens · k / E) assignments; the rest are dropped (expert output 0,
// so the token passes through the block's residual). dropless(true) drops nothing.
//
// Any RouterImpl over E experts routes (e.g. TopKRouter); a router without indices (soft
// routing) activates every expert with its weight.
//
// Parameters: w_up, w_gate [E, I, H], w_down [E, H, I]; with bias b_up, b_gate [E, I],
// b_down [E, H]; with shared_bias output_bias [H] (added to every token's output).
//
//   auto router = modula::TopKRouter(modula::TopKRouterOptions(64, 8).k(2));
//   auto moe = modula::MoeFfn(modula::MoeFfnOptions(64, 32, 8).activation("silu"), router.ptr());
//   block_site->attach("moe", moe.ptr());   // the site no longer runs its dense FFN
#pragma once

#include <string>

#include "modula/backbone/layers.h"
#include "modula/routing/algorithm1.h"
#include "modula/routing/router.h"

namespace modula {

struct MoeFfnOptions {
  MoeFfnOptions(int64_t features, int64_t expert_size, int64_t num_experts)
      : features_(features), expert_size_(expert_size), num_experts_(num_experts) {}
  TORCH_ARG(int64_t, features);                 // H
  TORCH_ARG(int64_t, expert_size);              // I, intermediate neurons per expert
  TORCH_ARG(int64_t, num_experts);              // E
  TORCH_ARG(std::string, activation) = "silu";  // an HF activation name (layers.h)
  TORCH_ARG(bool, gated) = true;                // SwiGLU experts (Llama/Mixtral); false: plain MLP (GPT-2/BERT/Switch)
  TORCH_ARG(bool, bias) = false;                // per-expert biases b_up, b_gate, b_down
  TORCH_ARG(bool, shared_bias) = false;         // one output bias for every token (MoEfication keeps the dense one)
  TORCH_ARG(bool, weighted) = true;             // scale expert outputs by the routing weights
  TORCH_ARG(bool, dropless) = true;             // no capacity limit
  TORCH_ARG(double, capacity_factor) = 1.25;    // C, used when !dropless
  // MoEfication router training: adds coef · BCE(router logits, top-k experts by
  // activation norm) to the router's aux_loss in training mode. Needs a TopKRouter.
  TORCH_ARG(double, router_distillation_coef) = 0.0;

 public:  // TORCH_ARG leaves the section private
  // Throws std::invalid_argument naming the bad field.
  void validate() const;
  // ceil(C · tokens · k / E).
  int64_t capacity(int64_t tokens, int64_t k) const;
};

// The layer is its own expert bank (algorithm1.h): MoE = this bank + a router (TopKRouter)
// + WeightedSum (Sum when !weighted).
class MoeFfnImpl : public SiteModule, public ModuleBank {
 public:
  // Throws std::invalid_argument when the router's expert count differs from E, or
  // router_distillation_coef > 0 without a TopKRouter.
  MoeFfnImpl(const MoeFfnOptions& options, std::shared_ptr<RouterImpl> router);
  // Every expert like a fresh torch.nn.Linear (kaiming-uniform weights, zero biases).
  void reset();

  SiteKind site_kind() const override { return SiteKind::Block; }
  bool replaces_block() const override { return true; }
  // x [.., H] -> [.., H]; y (the dense block output, possibly undefined) is not read.
  torch::Tensor transform_block(const torch::Tensor& x, const torch::Tensor& y) override;
  bool mergeable() const override { return false; }
  void merge(LinearImpl& base) override;    // throws: routing depends on the input
  void unmerge(LinearImpl& base) override;  // throws

  // Routes and computes x [N, T, H] -> [N, T, H] (Algorithm 1).
  torch::Tensor forward(const torch::Tensor& x);

  // ModuleBank over the E experts (in.x [.., H]; y is not read). selected: idx/w [N, k] per
  // example or [.., k] per token, sorted dispatch with capacity; mixed: every expert, w [.., E].
  torch::Tensor selected(const SiteInput& in, const torch::Tensor& idx, const torch::Tensor& w) override;
  torch::Tensor mixed(const SiteInput& in, const torch::Tensor& w) override;
  int64_t num_modules() const override { return options.num_experts(); }
  std::string kind() const override { return "moe ffn"; }
  // Expert e on tokens x [n, H] -> [n, H].
  torch::Tensor expert(int64_t e, const torch::Tensor& x) const;
  // Σ over assignments of gate · E_expert(x_token): x [N, H], experts/gates [N, k].
  // Sorted by expert, one call per expert on a contiguous segment, capacity applied.
  torch::Tensor dispatch(const torch::Tensor& x, const torch::Tensor& experts, const torch::Tensor& gates);
  // ||intermediate activation of expert e||₂ for every token and expert, x [.., H] -> [.., E]
  // (all experts at once; the MoEfication router's training signal).
  torch::Tensor activation_norms(const torch::Tensor& x) const;
  // BCE-with-logits of the router logits against the top-k experts by activation norm
  // (Zhang et al. 2022, §3.2, as multi-label classification). Needs a TopKRouter.
  torch::Tensor router_distillation_loss(const torch::Tensor& x);

  MoeFfnOptions options;
  std::shared_ptr<RouterImpl> router;
  torch::Tensor w_up, w_gate, w_down, b_up, b_gate, b_down, output_bias;

  // The last forward, for inspection: routing, and which (token, choice) assignments ran
  // ([N·T, k] bool; false = dropped by the capacity limit).
  Routing last_routing;
  torch::Tensor last_kept;
};
TORCH_MODULE(MoeFfn);

}  // namespace modula
