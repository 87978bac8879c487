#include "modula/routing/softmax.h"

#include <cmath>
#include <stdexcept>

#include "modula/util/error.h"

namespace modula {

void SoftmaxRouterOptions::validate() const {
  static constexpr std::string_view kTag = "routing";
  if (in_features() <= 0) throw_error(kTag, "softmax router: in_features must be positive");
  if (num_modules() <= 0) throw_error(kTag, "softmax router: num_modules must be positive");
  if (!(temperature() > 0) || !std::isfinite(temperature()))
    throw_error(kTag, "softmax router: temperature must be positive and finite");
}

SoftmaxRouterImpl::SoftmaxRouterImpl(const SoftmaxRouterOptions& options_, std::shared_ptr<RoutingContext> context_)
    : options(options_), context(std::move(context_)) {
  options.validate();
  reset();
}

void SoftmaxRouterImpl::reset() {
  // Small init: routing starts near uniform.
  weight = register_parameter("weight", torch::randn({options.num_modules(), options.in_features()}) * 0.01);
  bias = register_parameter("bias", torch::zeros({options.num_modules()}));
}

torch::Tensor masked_mean(const torch::Tensor& x, const torch::Tensor& mask) {
  if (!mask.defined()) return x.mean(1);
  if (mask.dim() != 2 || mask.size(0) != x.size(0) || mask.size(1) < x.size(1))
    throw_error("routing", "mask " + c10::str(mask.sizes()) + " does not cover the site input " + c10::str(x.sizes()) +
                               " (want [N, S >= T])");
  auto m = mask.narrow(1, mask.size(1) - x.size(1), x.size(1)).to(x.device(), x.scalar_type()).unsqueeze(-1);
  return (x * m).sum(1) / m.sum(1).clamp_min(1);
}

torch::Tensor SoftmaxRouterImpl::logits(const torch::Tensor& x) const {
  if (x.size(-1) != options.in_features())
    throw_error("routing", "softmax router expects inputs of width " + std::to_string(options.in_features()) +
                               ", got " + c10::str(x.sizes()));
  auto h = x.dim() == 3 && !options.per_token() ? masked_mean(x, context ? context->mask() : torch::Tensor()) : x;
  return torch::nn::functional::linear(h, weight.to(h.scalar_type()), bias.to(h.scalar_type()));
}

// w = softmax((W_r h + b_r) / tau).
Routing SoftmaxRouterImpl::route(const torch::Tensor& x) {
  return {torch::softmax(logits(x) / options.temperature(), -1), torch::Tensor()};
}

}  // namespace modula
