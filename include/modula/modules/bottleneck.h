// Bottleneck adapters (function composition, survey §3.3) on block sites: a small MLP
// f(h) = up(act(down(LN?(h)))), hidden H -> H / reduction_factor -> H.
//
//   sequential (Houlsby et al. 2019; Pfeiffer et al. 2021):  y ← y + s · f(y)
//   parallel   (He et al. 2022):                             y ← y + s · f(x)
//
// x is the block input (after the pre-LN for pre-LN models), y the block output before
// the residual add, s = scaling · scale. The up-projection starts at exactly zero, so the
// adapter starts as the identity. residual(false) drops the "y +" (then y ← s · f(·)).
// Non-linear, hence never merged into weights.
//
// Parameters: adapter_down.{weight [m, H], bias [m]}, adapter_up.{weight [H, m], bias [H]},
// with ln_before also adapter_norm_before.{weight, bias} [H]; m = floor(H / reduction_factor).
//
//   auto b = Bottleneck(BottleneckOptions(64).reduction_factor(16).non_linearity("relu"));
//   block_site->attach("default", b.ptr());
#pragma once

#include <string>
#include <vector>

#include "modula/backbone/layers.h"

namespace modula {

struct BottleneckOptions {
  explicit BottleneckOptions(int64_t features) : features_(features) {}
  TORCH_ARG(int64_t, features);                    // hidden size H of the block site
  TORCH_ARG(double, reduction_factor) = 16.0;      // bottleneck m = floor(H / reduction_factor)
  TORCH_ARG(std::string, non_linearity) = "relu";  // relu, gelu, silu (swish), tanh
  TORCH_ARG(bool, residual) = true;                // add the adapter output to y
  TORCH_ARG(bool, ln_before) = false;              // LayerNorm on the adapter input
  TORCH_ARG(double, scaling) = 1.0;                // s, the output scale (He et al. 2022 use 4 for parallel)
  TORCH_ARG(std::string, mode) = "sequential";     // "sequential" (reads y) or "parallel" (reads x)

 public:  // TORCH_ARG leaves the section private
  // Throws std::invalid_argument naming the bad field.
  void validate() const;
  int64_t bottleneck_size() const;
};

class BottleneckImpl : public SiteModule {
 public:
  explicit BottleneckImpl(const BottleneckOptions& options);
  // down: kaiming-uniform like torch.nn.Linear; up: zeros (identity at init).
  void reset();

  SiteKind site_kind() const override { return SiteKind::Block; }
  torch::Tensor transform_block(const torch::Tensor& x, const torch::Tensor& y) override;
  bool mergeable() const override { return false; }
  // Throw std::invalid_argument: a non-linear function of the hidden state has no weight delta.
  void merge(LinearImpl& base) override;
  void unmerge(LinearImpl& base) override;

  BottleneckOptions options;
  torch::nn::LayerNorm adapter_norm_before{nullptr};
  torch::nn::Linear adapter_down{nullptr}, adapter_up{nullptr};
};
TORCH_MODULE(Bottleneck);

// A published bottleneck configuration: which blocks it adapts and its defaults.
struct BottleneckPreset {
  std::string name;
  std::vector<BlockRole> blocks;
  BottleneckOptions defaults;  // features 0: set per site
};

// "pfeiffer" (sequential after the feed-forward block; Pfeiffer et al. 2021),
// "houlsby" (sequential after the attention and feed-forward blocks; Houlsby et al. 2019),
// "parallel" (parallel to the feed-forward block, s = 4; He et al. 2022).
// Throws std::invalid_argument listing the names.
const BottleneckPreset& bottleneck_preset(const std::string& name);

}  // namespace modula
