// MoEfication (Zhang et al. 2022, "MoEfication: Transformer Feed-forward Layers are
// Mixtures of Experts"): a dense FFN  F(x) = W_down act(W_up x + b) + b'  is split into E
// experts by partitioning its I intermediate neurons into groups S_1..S_E:
//
//   F(x) = Σ_e W_down[:, S_e] act(W_up[S_e] x + b[S_e]) + b'       (exact: a re-grouping of the sum)
//
// Groups come from balanced k-means on the rows of W_up (SwiGLU: [W_gate | W_up] rows),
// so neurons that fire together share an expert. A top-k router then computes only the k
// groups predicted to matter, trained to predict the groups of largest activation norm
// (MoeFfnOptions::router_distillation_coef; its loss is left in the router's aux_loss).
// With k = E the MoE-fied FFN equals the dense one.
//
//   auto moes = modula::moefy(*model, modula::MoefyOptions(8).k(2));
//   model->train();  ... loss = modula::collect_aux_loss(*model); // trains the routers
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "modula/backbone/backbone.h"
#include "modula/composition/moe_ffn.h"

namespace modula {

// The dense feed-forward of a block site as [out, in] matrices (biases undefined when absent).
struct DenseFfn {
  torch::Tensor w_up, w_gate, w_down;  // [I, H], [I, H] (gated only), [H, I]
  torch::Tensor b_up, b_gate, b_down;  // [I], [I], [H]
  std::string activation;
  bool gated = false;
  int64_t features() const { return w_down.size(0); }
  int64_t intermediate() const { return w_up.size(0); }
};

// Reads the FFN of the feed-forward block site `path` (Llama-family "model.layers.N.mlp",
// GPT-2 "transformer.h.N.mlp", encoders "….layer.N.output"). Throws std::invalid_argument
// naming the path when it is not a feed-forward site or its projections carry modules.
DenseFfn dense_ffn(Backbone& model, const std::string& path);

// Balanced k-means: partitions the rows of `points` [n, d] into `clusters` groups of
// exactly n / clusters rows. Centroids start at distinct rows drawn with `seed`; each step
// assigns greedily by ascending distance under the size limit (a heuristic for the
// balanced assignment problem), then moves centroids to their group means.
// Returns the group of each row, [n] int64. Throws when n is not divisible by `clusters`.
torch::Tensor balanced_kmeans(const torch::Tensor& points, int64_t clusters, int64_t iterations, uint64_t seed);

// Attaches make(dense_ffn(site)) as `name` at every feed-forward block site of `layers`
// (empty = every layer), on the site's device and dtype; the MoE FFN then replaces the
// dense FFN in the forward. Throws when a site already carries block modules (a replacing
// module must come first) or nothing matches. Returns the attached layers by site path.
std::vector<std::pair<std::string, MoeFfn>> replace_ffns(Backbone& model, const std::vector<int64_t>& layers,
                                                         const std::string& name,
                                                         const std::function<MoeFfn(const DenseFfn&)>& make);

struct MoefyOptions {
  explicit MoefyOptions(int64_t num_experts) : num_experts_(num_experts) {}
  TORCH_ARG(int64_t, num_experts);               // E; must divide the intermediate size
  TORCH_ARG(int64_t, k) = 2;                     // experts computed per token
  TORCH_ARG(std::vector<int64_t>, layers) = {};  // layer indices; empty = every layer
  TORCH_ARG(int64_t, kmeans_iterations) = 20;
  TORCH_ARG(uint64_t, seed) = 0;
  TORCH_ARG(std::string, name) = "moe";  // the attach name at each site
  TORCH_ARG(double, router_distillation_coef) = 1.0;
  TORCH_ARG(double, load_balance_coef) = 0.0;  // router losses (top_k.h), off by default
  TORCH_ARG(double, z_loss_coef) = 0.0;
  // Padding mask source for the routers' losses (RoutingContext::set_mask); optional.
  TORCH_ARG(std::shared_ptr<RoutingContext>, context) = nullptr;

 public:  // TORCH_ARG leaves the section private
  // Throws std::invalid_argument naming the bad field.
  void validate() const;
};

// The MoE FFN equal to `ffn` when all experts are active: experts are the neuron groups of
// balanced k-means; the TopKRouter's gate starts at the group centroids of the rows that
// drive the activation (W_gate for SwiGLU, W_up otherwise). Unweighted combination.
MoeFfn moefy_ffn(const DenseFfn& ffn, const MoefyOptions& options);

// MoE-fies every selected feed-forward block of `model`: attaches moefy_ffn(dense_ffn(site))
// as options.name, which replaces the dense FFN in the forward. Returns them by site path.
std::vector<std::pair<std::string, MoeFfn>> moefy(Backbone& model, const MoefyOptions& options);

}  // namespace modula
