#include "modula/backbone/layers.h"

#include <cmath>

#include "modula/util/error.h"

namespace modula {

LinearImpl::LinearImpl(const LinearOptions& options_) : SiteHost(SiteKind::Linear), options(options_) { reset(); }

void LinearImpl::reset() {
  auto shape = options.conv1d_layout() ? std::vector<int64_t>{options.in_features(), options.out_features()}
                                       : std::vector<int64_t>{options.out_features(), options.in_features()};
  weight = register_parameter("weight", torch::empty(shape));
  // Kaiming-uniform like torch.nn.Linear; checkpoints overwrite it.
  double bound = 1.0 / std::sqrt(static_cast<double>(options.in_features()));
  torch::NoGradGuard no_grad;
  weight.uniform_(-bound, bound);
  if (options.bias()) bias = register_parameter("bias", torch::zeros({options.out_features()}));
}

torch::Tensor LinearImpl::base_forward(const torch::Tensor& x) const {
  if (!options.conv1d_layout()) return torch::nn::functional::linear(x, weight, bias);
  // GPT-2 Conv1D: y = x @ W + b with W [in, out].
  auto y = torch::matmul(x, weight);
  return bias.defined() ? y + bias : y;
}

torch::Tensor LinearImpl::forward(const torch::Tensor& x) {
  if (!has_modules()) return base_forward(x);
  auto in = x;
  for (auto& m : site_modules())
    if (m->active()) in = m->transform_input(in);
  return adapt_output(x, base_forward(in));
}

torch::Tensor LinearImpl::adapt_output(const torch::Tensor& x, torch::Tensor y) {
  for (auto& m : site_modules())
    if (m->active()) y = m->transform_output(x, y, *this);
  return y;
}

bool LinearImpl::transforms_input() const {
  for (const auto& m : site_modules())
    if (m->active() && m->transforms_input()) return true;
  return false;
}

void LinearImpl::add_to_weight(const torch::Tensor& delta) {
  torch::NoGradGuard no_grad;
  weight.add_(options.conv1d_layout() ? delta.t() : delta);
}

torch::Tensor BlockSite::adapt(const torch::Tensor& x, const torch::Tensor& y) {
  if (!has_modules()) return y;
  auto out = y;
  for (auto& m : site_modules())
    if (m->active()) out = m->transform_block(x, out);
  return out;
}

bool BlockSite::needs_base() const {
  for (const auto& m : site_modules())
    if (m->active()) return !m->replaces_block();
  return true;
}

torch::Tensor BlockSite::adapt(const torch::Tensor& x, const std::function<torch::Tensor()>& base) {
  return adapt(x, needs_base() ? base() : torch::Tensor());
}

RMSNormImpl::RMSNormImpl(int64_t dim, double eps_) : eps(eps_) {
  weight = register_parameter("weight", torch::ones({dim}));
}

torch::Tensor RMSNormImpl::forward(const torch::Tensor& x) {
  auto h = x.to(torch::kFloat32);
  h = h * torch::rsqrt(h.pow(2).mean(-1, /*keepdim=*/true) + eps);
  return weight * h.to(x.scalar_type());
}

torch::Tensor activation(const std::string& name, const torch::Tensor& x) {
  if (name == "silu" || name == "swish") return torch::silu(x);
  if (name == "gelu") return torch::gelu(x);
  if (name == "gelu_new" || name == "gelu_pytorch_tanh" || name == "gelu_fast") {
    // HF NewGELUActivation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
    return 0.5 * x * (1.0 + torch::tanh(std::sqrt(2.0 / M_PI) * (x + 0.044715 * torch::pow(x, 3.0))));
  }
  if (name == "relu") return torch::relu(x);
  if (name == "tanh") return torch::tanh(x);
  throw_error<ConfigError>("config", "unknown activation '" + name + "' (supported: silu, gelu, gelu_new, relu, tanh)");
}

void check_activation(const std::string& name) { activation(name, torch::zeros({1})); }

Rotary::Rotary(const io::ModelConfig& c) {
  const int64_t dim = c.head_dim;
  auto exponent = torch::arange(0, dim, 2, torch::kInt64).to(torch::kFloat32) / static_cast<double>(dim);
  inv_freq_ = 1.0 / torch::pow(c.rope_theta, exponent);
  const auto& r = c.rope_scaling;
  if (r.type == "linear") {
    inv_freq_ = inv_freq_ / r.factor;
  } else if (r.type == "llama3") {
    // HF _compute_llama3_parameters: scale long wavelengths, interpolate the band between.
    double old_len = static_cast<double>(r.original_max_position_embeddings);
    double low_wavelen = old_len / r.low_freq_factor, high_wavelen = old_len / r.high_freq_factor;
    auto wavelen = 2 * M_PI / inv_freq_;
    auto scaled = torch::where(wavelen > low_wavelen, inv_freq_ / r.factor, inv_freq_);
    auto smooth = (old_len / wavelen - r.low_freq_factor) / (r.high_freq_factor - r.low_freq_factor);
    auto smoothed = (1 - smooth) * scaled / r.factor + smooth * scaled;
    auto medium = (wavelen >= high_wavelen).logical_and(wavelen <= low_wavelen);
    inv_freq_ = torch::where(medium, smoothed, scaled);
  }
}

std::pair<torch::Tensor, torch::Tensor> Rotary::cos_sin(const torch::Tensor& position_ids,
                                                        torch::ScalarType dtype) const {
  auto inv = inv_freq_.to(position_ids.device());
  auto freqs = position_ids.to(torch::kFloat32).unsqueeze(-1) * inv;  // [B,T,D/2]
  auto emb = torch::cat({freqs, freqs}, -1);
  return {emb.cos().to(dtype), emb.sin().to(dtype)};
}

torch::Tensor Rotary::apply(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin) {
  auto half = x.size(-1) / 2;
  auto rotated = torch::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
  return x * cos.unsqueeze(1) + rotated * sin.unsqueeze(1);
}

torch::Tensor attention_bias(const torch::Tensor& attention_mask, int64_t B, int64_t T, int64_t S, bool causal,
                             int64_t window, torch::ScalarType dtype, torch::Device device) {
  auto opts = torch::TensorOptions().device(device);
  auto allowed = torch::ones({B, 1, T, S}, opts.dtype(torch::kBool));
  if (attention_mask.defined()) {
    if (attention_mask.dim() != 2 || attention_mask.size(0) != B || attention_mask.size(1) != S)
      throw_error("backbone", "attention_mask must be [B,S] = [" + std::to_string(B) + "," + std::to_string(S) +
                                  "], got " + c10::str(attention_mask.sizes()));
    allowed = allowed.logical_and(attention_mask.to(device).to(torch::kBool).view({B, 1, 1, S}));
  }
  if (causal || window > 0) {
    auto q_pos = torch::arange(S - T, S, opts.dtype(torch::kInt64)).view({T, 1});
    auto k_pos = torch::arange(0, S, opts.dtype(torch::kInt64)).view({1, S});
    if (causal) allowed = allowed.logical_and(k_pos <= q_pos);
    if (window > 0) allowed = allowed.logical_and(k_pos > q_pos - window);
  }
  auto lowest = std::numeric_limits<float>::lowest();
  if (dtype == torch::kHalf) lowest = -65504.0f;
  if (dtype == torch::kBFloat16) lowest = -3.38953e38f;
  return torch::zeros({B, 1, T, S}, opts.dtype(dtype)).masked_fill(allowed.logical_not(), lowest);
}

}  // namespace modula
