#include "modula/modules/bottleneck.h"

#include <cmath>

#include "modula/util/error.h"

namespace modula {
namespace {

constexpr std::string_view kBottleneckTag = "bottleneck";

bool known_activation(const std::string& name) {
  return name == "relu" || name == "gelu" || name == "silu" || name == "swish" || name == "tanh";
}

}  // namespace

void BottleneckOptions::validate() const {
  if (features() <= 0) throw_error(kBottleneckTag, "features (hidden size) must be positive");
  if (!(reduction_factor() > 0) || !std::isfinite(reduction_factor()))
    throw_error(kBottleneckTag, "reduction_factor must be positive (got " + std::to_string(reduction_factor()) + ")");
  if (bottleneck_size() < 1)
    throw_error(kBottleneckTag, "reduction_factor " + std::to_string(reduction_factor()) +
                                    " leaves no bottleneck units for hidden size " + std::to_string(features()));
  if (!known_activation(non_linearity()))
    throw_error(kBottleneckTag,
                "unknown non_linearity '" + non_linearity() + "' (supported: relu, gelu, silu, swish, tanh)");
  if (mode() != "sequential" && mode() != "parallel")
    throw_error(kBottleneckTag, "mode '" + mode() + "' is not sequential or parallel");
  if (!std::isfinite(scaling())) throw_error(kBottleneckTag, "scaling must be finite");
}

int64_t BottleneckOptions::bottleneck_size() const {
  return static_cast<int64_t>(std::floor(static_cast<double>(features()) / reduction_factor()));
}

BottleneckImpl::BottleneckImpl(const BottleneckOptions& options_) : options(options_) {
  options.validate();
  reset();
}

void BottleneckImpl::reset() {
  const int64_t h = options.features(), m = options.bottleneck_size();
  if (options.ln_before())
    adapter_norm_before =
        register_module("adapter_norm_before", torch::nn::LayerNorm(torch::nn::LayerNormOptions({h})));
  adapter_down = register_module("adapter_down", torch::nn::Linear(h, m));
  adapter_up = register_module("adapter_up", torch::nn::Linear(m, h));
  // Near-identity start (Houlsby et al. 2019), made exact: the up-projection is zero.
  torch::NoGradGuard no_grad;
  adapter_up->weight.zero_();
  adapter_up->bias.zero_();
}

torch::Tensor BottleneckImpl::transform_block(const torch::Tensor& x, const torch::Tensor& y) {
  // Sequential reads the block output (Houlsby/Pfeiffer), parallel the block input (He et al. 2022).
  auto h = options.mode() == "parallel" ? x : y;
  if (adapter_norm_before) h = adapter_norm_before(h);
  auto f = adapter_up(activation(options.non_linearity(), adapter_down(h)));
  const double s = scale * options.scaling();
  auto out = s == 1.0 ? f : s * f;
  return options.residual() ? y + out : out;
}

void BottleneckImpl::merge(LinearImpl&) {
  throw_error(kBottleneckTag,
              "bottleneck adapters are non-linear in the hidden state and cannot be merged into base weights");
}

void BottleneckImpl::unmerge(LinearImpl&) { throw_error(kBottleneckTag, "bottleneck adapters are never merged"); }

const BottleneckPreset& bottleneck_preset(const std::string& name) {
  using R = BlockRole;
  static const std::vector<BottleneckPreset> presets = {
      // Pfeiffer et al. 2021 (AdapterFusion): one adapter after the feed-forward block.
      {"pfeiffer", {R::FeedForward}, BottleneckOptions(0).reduction_factor(16).non_linearity("relu")},
      // Houlsby et al. 2019: adapters after the attention and the feed-forward blocks.
      {"houlsby", {R::Attention, R::FeedForward}, BottleneckOptions(0).reduction_factor(16).non_linearity("silu")},
      // He et al. 2022: scaled parallel adapter on the feed-forward block.
      {"parallel",
       {R::FeedForward},
       BottleneckOptions(0).reduction_factor(2).non_linearity("relu").mode("parallel").scaling(4.0)},
  };
  for (const auto& p : presets)
    if (p.name == name) return p;
  throw_error(kBottleneckTag, "unknown config '" + name + "' (supported: pfeiffer, houlsby, parallel)");
}

}  // namespace modula
