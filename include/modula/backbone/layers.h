// Building blocks shared by the backbone families. Each follows the HF formula it
// names so that outputs match transformers to float rounding.
#pragma once

#include <torch/torch.h>

#include <functional>
#include <string>

#include "modula/backbone/site.h"
#include "modula/io/hf_config.h"

namespace modula {

// y = x W^T + b, the site where parameter-composition modules attach.
// `conv1d_layout`: weight stored [in, out] as GPT-2's Conv1D (PEFT fan_in_fan_out).
struct LinearOptions {
  LinearOptions(int64_t in, int64_t out) : in_features_(in), out_features_(out) {}
  TORCH_ARG(int64_t, in_features);
  TORCH_ARG(int64_t, out_features);
  TORCH_ARG(bool, bias) = true;
  TORCH_ARG(bool, conv1d_layout) = false;
};

class LinearImpl : public torch::nn::Module, public SiteHost {
 public:
  explicit LinearImpl(const LinearOptions& options);
  void reset();
  // [.., in] -> [.., out]: the base projection with every attached module applied.
  torch::Tensor forward(const torch::Tensor& x);
  // y ← out(x, y) for each active module: forward() after the base projection.
  torch::Tensor adapt_output(const torch::Tensor& x, torch::Tensor y);
  // Whether an active module transforms the input before the base projection.
  bool transforms_input() const;
  // The base projection alone.
  torch::Tensor base_forward(const torch::Tensor& x) const;
  // The weight as [out, in] whatever the storage layout.
  torch::Tensor weight_out_in() const { return options.conv1d_layout() ? weight.t() : weight; }
  // Adds delta [out, in] to the weight in place (handles the Conv1D layout).
  void add_to_weight(const torch::Tensor& delta_out_in);

  // attach/detach/module/module_names come from SiteHost.
  LinearOptions options;
  torch::Tensor weight, bias;
};
TORCH_MODULE(Linear);

// Which sub-layer a block site is: the attention block or the feed-forward block.
enum class BlockRole { Attention, FeedForward };

// A sub-layer block as a site (see site.h): x is the sub-layer input (after the pre-LN
// for pre-LN models), y its output before the residual add, both [.., features].
// Families derive their attention/MLP modules from it, or register a bare BlockSite
// where the HF path has no module of its own.
class BlockSite : public torch::nn::Module, public SiteHost {
 public:
  BlockSite(BlockRole block_role, int64_t hidden) : SiteHost(SiteKind::Block), role(block_role), features(hidden) {}
  // y ← block(x, y) for each active module; y itself when none is attached.
  torch::Tensor adapt(const torch::Tensor& x, const torch::Tensor& y);
  // The same with the base output computed lazily: `base` is not run when the first active
  // module replaces the block (SiteModule::replaces_block); it then sees an undefined y.
  torch::Tensor adapt(const torch::Tensor& x, const std::function<torch::Tensor()>& base);
  // Whether the base sub-layer output is needed (false: the first active module replaces it).
  bool needs_base() const;

  BlockRole role;
  int64_t features;  // hidden size H
};

// RMSNorm (Zhang & Sennrich 2019), HF LlamaRMSNorm: w * x / sqrt(mean(x^2) + eps), in fp32.
class RMSNormImpl : public torch::nn::Module {
 public:
  RMSNormImpl(int64_t dim, double eps);
  torch::Tensor forward(const torch::Tensor& x);
  torch::Tensor weight;
  double eps;
};
TORCH_MODULE(RMSNorm);

// Activation by HF name: silu/swish, gelu (erf), gelu_new/gelu_pytorch_tanh (tanh approx), relu, tanh.
torch::Tensor activation(const std::string& name, const torch::Tensor& x);
// Throws ConfigError for names activation() does not know.
void check_activation(const std::string& name);

// Rotary position embedding (Su et al. 2021) with HF's default/linear/llama3 frequencies.
class Rotary {
 public:
  Rotary(const io::ModelConfig& c);
  // cos, sin: [B,T,D] for position_ids [B,T].
  std::pair<torch::Tensor, torch::Tensor> cos_sin(const torch::Tensor& position_ids, torch::ScalarType dtype) const;
  // x [B,H,T,D]: x*cos + rotate_half(x)*sin, rotate_half(x) = cat(-x2, x1).
  static torch::Tensor apply(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin);

 private:
  torch::Tensor inv_freq_;  // [D/2] fp32
};

// Additive attention mask [B,1,T,S]: 0 where query t may see key s, dtype-lowest elsewhere.
// Keys are masked by attention_mask [B,S] (undefined = none); `causal` also hides
// keys after the query (query t sits at position past + t); `window` > 0 hides keys
// more than window-1 positions back (Mistral sliding window).
torch::Tensor attention_bias(const torch::Tensor& attention_mask, int64_t B, int64_t T, int64_t S, bool causal,
                             int64_t window, torch::ScalarType dtype, torch::Device device);

}  // namespace modula

namespace modula {

// Registers `module` under a dotted path ("attention.self.query"), creating empty
// intermediate modules, so parameter names match HF state-dict keys.
template <typename M>
std::shared_ptr<M> register_at(torch::nn::Module& root, const std::string& dotted, std::shared_ptr<M> module) {
  torch::nn::Module* parent = &root;
  std::string rest = dotted;
  for (auto dot = rest.find('.'); dot != std::string::npos; dot = rest.find('.')) {
    std::string name = rest.substr(0, dot);
    rest = rest.substr(dot + 1);
    auto children = parent->named_children();
    auto found = children.find(name);
    parent = found ? found->get() : parent->register_module(name, std::make_shared<torch::nn::Module>()).get();
  }
  return parent->register_module(rest, std::move(module));
}

}  // namespace modula
