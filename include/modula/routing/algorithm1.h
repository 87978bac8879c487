// The survey's Algorithm 1 (Pfeiffer et al. 2023, §2): one forward through a modular
// site is
//
//   w  = r(x)                              route: which modules, how much
//   d_m = f_m(x; φ_m)   for the selected m  compute: only the modules the routing selects
//   y ← y + g({d_m}, w)                    aggregate: weighted sum of outputs, or
//   y ← y + f(x; Σ_m w_m φ_m)                         of parameters (SMEAR, Polytropon)
//
// Every routed site in modula runs `algorithm1()` over a ModuleBank: the bank computes,
// the router routes, the Aggregation picks how the bank combines. Banks:
//
//   LoraBank    (lora_bank.h)  LoRA family at Linear sites: s B A x
//   Ia3Bank     (ia3_bank.h)   (IA)³ at Linear sites: y ⊙ (l − 1) or W (x ⊙ (l − 1))
//   PolyLora    (poly_lora.h)  Polytropon / MHR skills (parameter aggregation per split)
//   MoeFfn      (moe_ffn.h)    FFN experts at block sites (sorted dispatch, capacity)
//   Routed      (aggregation/routed.h)  any block-site modules (bottleneck adapters, fusions…)
//   InputBank   (input_bank.h) prompts / prefixes per row (input composition)
//   HyperLoraBank (modules/hypernetwork.h) LoRA generated from rows of a task-embedding table
//
// so that Polytropon = PolyLora bank + PolyRouter + ParameterAverage, SMEAR = LoraBank +
// per-example SoftmaxRouter + ParameterAverage, MoE = expert bank + TopKRouter +
// WeightedSum, a mixed batch = any bank + FixedRouter (one module per row by metadata), a
// hypernetwork = HyperLoraBank + FixedRouter over the embeddings of the routing metadata.
#pragma once

#include "modula/backbone/layers.h"
#include "modula/routing/router.h"

namespace modula {

// How the selected modules' contributions combine (survey §5).
enum class Aggregation {
  WeightedSum,       // output aggregation: Σ_m w_m f_m(x)
  Sum,               // output aggregation without weights: Σ_{m selected} f_m(x) (MoEfication)
  ParameterAverage,  // parameter aggregation: f(x; Σ_m w_m φ_m), per-example weights
};
std::string to_string(Aggregation a);
// "weighted_sum" | "sum" | "parameter_average" (std::invalid_argument naming the others).
Aggregation aggregation_from_string(const std::string& name);

// What a bank sees at its site: the site input x [N, T, in] (batch first) and the site
// output so far y [N, T, out] (undefined for banks that replace the block, MoE FFNs);
// `base` is the Linear site for banks that re-use its weight ((IA)³ on inputs), else null.
struct SiteInput {
  torch::Tensor x, y;
  const LinearImpl* base = nullptr;
};

// A bank of M modules of one kind at one site. Each method returns the aggregated
// contribution [N, T, out] that the site adds to y (or the block output, for banks that
// replace the block).
class ModuleBank {
 public:
  virtual ~ModuleBank() = default;
  virtual int64_t num_modules() const = 0;
  // Hard routing: Σ_k w[.., k] f_{idx[.., k]}(x), idx/w [N, k] per example or [N, T, k] per
  // token; idx −1 = no module (weight ignored). Only the selected modules run.
  virtual torch::Tensor selected(const SiteInput& in, const torch::Tensor& idx, const torch::Tensor& w) = 0;
  // Soft routing: Σ_m w[.., m] f_m(x), w [N, M] or [N, T, M].
  virtual torch::Tensor mixed(const SiteInput& in, const torch::Tensor& w) = 0;
  // Parameter aggregation: f(x; Σ_m w_m φ_m), w [N, M]. Default: std::invalid_argument
  // naming `kind()` (not every module is linear in its parameters).
  virtual torch::Tensor averaged(const SiteInput& in, const torch::Tensor& w);
  // For messages: "lora bank", "ia3 bank", ...
  virtual std::string kind() const = 0;
};

// Algorithm 1 at one site: route x with `router`, compute the selected modules of `bank`,
// aggregate. Returns the contribution [N, T, out]; `last` (optional) receives the routing.
// Hard routing (indices defined) with WeightedSum/Sum runs only the selected modules.
torch::Tensor algorithm1(RouterImpl& router, ModuleBank& bank, Aggregation aggregation, const SiteInput& in,
                         Routing* last = nullptr);

// Parameter averaging shared by every bank that aggregates parameters:
// Σ_m w[n, g, m] P[g, m, ...] for weights w [N, G, M] and parameters P [G, M, ...]
// (G groups averaged independently: Polytropon's splits; LoRA: G = 1) -> [N, G, ...].
torch::Tensor average_parameters(const torch::Tensor& w, const torch::Tensor& P);

// Dense weights [N(, T), M] from hard routing idx/w [N(, T), k] (idx −1 contributes 0).
torch::Tensor dense_weights(const torch::Tensor& idx, const torch::Tensor& w, int64_t num_modules);

// x [.., in] with the batch first as [N, T, in].
torch::Tensor as_rows(const torch::Tensor& x, const char* where);

}  // namespace modula
