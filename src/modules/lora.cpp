#include "modula/modules/lora.h"

#include <cmath>
#include <limits>

#include "modula/util/error.h"
#include "modules/lora_kernels.h"

namespace modula {

void LoraOptions::validate() const {
  static constexpr std::string_view kTag = "lora";
  if (in_features() <= 0 || out_features() <= 0) throw_error(kTag, "in_features and out_features must be positive");
  if (r() <= 0) throw_error(kTag, "r must be positive (got " + std::to_string(r()) + ")");
  if (!(dropout() >= 0 && dropout() < 1)) throw_error(kTag, "dropout must be in [0, 1)");
  if (!std::isfinite(alpha())) throw_error(kTag, "alpha (lora_alpha) must be finite");
  // lora_A and lora_B hold r * (in + out) values; refuse sizes no machine allocates before the
  // allocator fails with a message that names nothing.
  constexpr int64_t kMaxLoraValues = int64_t{1} << 34;
  if (r() > kMaxLoraValues / (in_features() + out_features()))
    throw_error(kTag, "r " + std::to_string(r()) + " is too large for a " + std::to_string(in_features()) + "x" +
                          std::to_string(out_features()) + " layer (r * (in + out) must be at most " +
                          std::to_string(kMaxLoraValues) + ")");
  // The scaling multiplies float tensors: beyond float's range every output is inf/NaN.
  if (!(std::abs(scaling()) <= std::numeric_limits<float>::max()))
    throw_error(kTag, "alpha (lora_alpha) " + std::to_string(alpha()) + " gives the scaling " +
                          std::to_string(scaling()) + ", outside the float range");
}

double LoraOptions::scaling() const {
  return use_rslora() ? alpha() / std::sqrt(static_cast<double>(r())) : alpha() / static_cast<double>(r());
}

LoraImpl::LoraImpl(const LoraOptions& options_) : options(options_) {
  options.validate();
  reset();
}

void LoraImpl::reset() {
  lora_A = register_parameter("lora_A", torch::empty({options.r(), options.in_features()}));
  lora_B = register_parameter("lora_B", torch::zeros({options.out_features(), options.r()}));
  torch::NoGradGuard no_grad;
  torch::nn::init::kaiming_uniform_(lora_A, std::sqrt(5.0));
  if (options.use_dora())
    lora_magnitude_vector = register_parameter("lora_magnitude_vector", torch::ones({options.out_features()}));
}

void LoraImpl::init_dora_magnitude(const LinearImpl& base) {
  torch::NoGradGuard no_grad;
  lora_magnitude_vector.copy_(dora_weight_norm(base));
}

torch::Tensor LoraImpl::delta_weight() const { return scale * options.scaling() * torch::matmul(lora_B, lora_A); }

torch::Tensor LoraImpl::dora_weight_norm(const LinearImpl& base) const {
  // PEFT DoRA: the norm is treated as a constant in backprop (Liu et al. 2024, sec. 4.3).
  auto w = base.weight_out_in() + delta_weight();
  return w.norm(2, /*dim=*/1).detach();
}

namespace {

constexpr int64_t kFusedRows = 4;  // up to this many rows (decode at batch 1-4): lora_add_rows

// Without autograd, on the CPU in float32, a few rows, no DoRA, no active dropout.
bool fused_rows(const torch::Tensor& x, const torch::Tensor& y, const LoraOptions& o, bool training,
                const torch::Tensor& A, const torch::Tensor& B) {
  if (o.use_dora() || (o.dropout() > 0 && training) || torch::GradMode::is_enabled()) return false;
  if (!detail::cpu_float32({x, y, A, B})) return false;
  const int64_t rows = x.numel() / o.in_features();
  return rows <= kFusedRows && y.numel() == rows * o.out_features();
}

}  // namespace

torch::Tensor LoraImpl::transform_output(const torch::Tensor& x, const torch::Tensor& y, const LinearImpl& base) {
  if (fused_rows(x, y, options, is_training(), lora_A, lora_B))
    return detail::lora_add_rows(x, lora_A, lora_B, scale * options.scaling(), y);
  auto h = options.dropout() > 0 ? torch::dropout(x, options.dropout(), is_training()) : x;
  auto hA = torch::nn::functional::linear(h, lora_A);  // [.., r]
  if (!options.use_dora()) {
    const double s = scale * options.scaling();
    if (torch::GradMode::is_enabled()) return y + torch::nn::functional::linear(hA * s, lora_B);  // s on [.., r]
    // y + s · (A h) Bᵀ as one GEMM that accumulates into a copy of y: no [.., out] temporaries.
    const int64_t r = lora_A.size(0);
    return torch::addmm(y.reshape({-1, y.size(-1)}), hA.reshape({-1, r}), lora_B.t(), 1, s).view(y.sizes());
  }
  auto lora = torch::nn::functional::linear(hA, lora_B);
  // PEFT DoraLinearLayer: (m/||W'|| - 1) · W h + m/||W'|| · s · B A h, bias untouched.
  auto mag = lora_magnitude_vector / dora_weight_norm(base);  // m / ||W + s B A||
  auto base_out = torch::nn::functional::linear(h, base.weight_out_in());
  return y + (mag - 1) * base_out + mag * scale * options.scaling() * lora;
}

void LoraImpl::merge(LinearImpl& base) {
  if (merged) throw std::logic_error("[lora] already merged");
  torch::NoGradGuard no_grad;
  if (options.use_dora()) {
    merged_norm_ = dora_weight_norm(base);
    auto w = base.weight_out_in() + delta_weight();
    base.add_to_weight((lora_magnitude_vector / merged_norm_).unsqueeze(1) * w - base.weight_out_in());
  } else {
    base.add_to_weight(delta_weight());
  }
  merged = true;
}

void LoraImpl::unmerge(LinearImpl& base) {
  if (!merged) throw std::logic_error("[lora] not merged");
  torch::NoGradGuard no_grad;
  if (options.use_dora()) {
    auto w = base.weight_out_in() * (merged_norm_ / lora_magnitude_vector).unsqueeze(1) - delta_weight();
    base.add_to_weight(w - base.weight_out_in());
  } else {
    base.add_to_weight(-delta_weight());
  }
  merged = false;
}

}  // namespace modula
