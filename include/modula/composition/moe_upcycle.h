// Sparse upcycling (Komatsuzaki et al. 2023): a dense FFN becomes a MoE FFN whose E experts
// all start as copies of it, with a fresh top-k router. Since the experts are equal and the
// renormalised top-k weights sum to 1, the upcycled model starts exactly as the dense one
// (dropless); training then lets the experts diverge.
//
//   auto moes = modula::upcycle(*model, modula::UpcycleOptions(8).k(2));
#pragma once

#include "modula/composition/moefication.h"

namespace modula {

struct UpcycleOptions {
  explicit UpcycleOptions(int64_t num_experts) : num_experts_(num_experts) {}
  TORCH_ARG(int64_t, num_experts);               // E copies of the dense FFN
  TORCH_ARG(int64_t, k) = 2;                     // experts per token
  TORCH_ARG(std::vector<int64_t>, layers) = {};  // layer indices; empty = every layer
  TORCH_ARG(std::string, name) = "moe";          // the attach name at each site
  TORCH_ARG(bool, noisy) = false;
  TORCH_ARG(double, load_balance_coef) = 0.01;
  TORCH_ARG(double, z_loss_coef) = 0.001;
  TORCH_ARG(bool, dropless) = true;
  TORCH_ARG(double, capacity_factor) = 1.25;
  TORCH_ARG(std::shared_ptr<RoutingContext>, context) = nullptr;  // padding mask for the losses

 public:  // TORCH_ARG leaves the section private
  // Throws std::invalid_argument naming the bad field.
  void validate() const;
};

// E copies of `ffn` behind a fresh TopKRouter (renormalised top-k, weighted combination).
MoeFfn upcycle_ffn(const DenseFfn& ffn, const UpcycleOptions& options);

// A MoE FFN trained from scratch (Switch, Fedus et al. 2022): the dense FFN's architecture
// (activation, gating, biases) with E fresh experts of `expert_size` neurons (0 = the dense
// FFN's), weights ~ N(0, init_std²), biases 0, behind a fresh top-k router of `options`.
MoeFfn random_moe_ffn(const DenseFfn& ffn, const UpcycleOptions& options, int64_t expert_size, double init_std);

// Upcycles every selected feed-forward block (replace_ffns). Returns the layers by site path.
std::vector<std::pair<std::string, MoeFfn>> upcycle(Backbone& model, const UpcycleOptions& options);

}  // namespace modula
