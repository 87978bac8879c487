#include "modula/modules/ia3.h"

#include "modula/util/error.h"

namespace modula {

Ia3Impl::Ia3Impl(const Ia3Options& options_) : options(options_) {
  if (options.in_features() <= 0 || options.out_features() <= 0)
    throw_error("ia3", "in_features and out_features must be positive");
  reset();
}

void Ia3Impl::reset() {
  auto shape = options.feedforward() ? std::vector<int64_t>{1, options.in_features()}
                                     : std::vector<int64_t>{options.out_features(), 1};
  ia3_l = register_parameter("ia3_l", torch::ones(shape));
}

torch::Tensor Ia3Impl::scaled_l() const { return scale == 1.0 ? ia3_l.flatten() : 1 + scale * (ia3_l.flatten() - 1); }

torch::Tensor Ia3Impl::transform_input(const torch::Tensor& x) { return options.feedforward() ? x * scaled_l() : x; }

torch::Tensor Ia3Impl::transform_output(const torch::Tensor&, const torch::Tensor& y, const LinearImpl&) {
  return options.feedforward() ? y : y * scaled_l();
}

void Ia3Impl::merge(LinearImpl& base) {
  if (merged) throw std::logic_error("[ia3] already merged");
  torch::NoGradGuard no_grad;
  auto w = base.weight_out_in();
  auto l = scaled_l();
  // Feed-forward: scale input columns; otherwise scale output rows and the bias.
  base.add_to_weight(options.feedforward() ? w * (l.unsqueeze(0) - 1) : w * (l.unsqueeze(1) - 1));
  if (!options.feedforward() && base.bias.defined()) base.bias.mul_(l);
  merged = true;
}

void Ia3Impl::unmerge(LinearImpl& base) {
  if (!merged) throw std::logic_error("[ia3] not merged");
  torch::NoGradGuard no_grad;
  auto w = base.weight_out_in();
  auto l = scaled_l();
  base.add_to_weight(options.feedforward() ? w * (1 / l.unsqueeze(0) - 1) : w * (1 / l.unsqueeze(1) - 1));
  if (!options.feedforward() && base.bias.defined()) base.bias.div_(l);
  merged = false;
}

}  // namespace modula
