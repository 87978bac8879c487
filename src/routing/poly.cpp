#include "modula/routing/poly.h"

#include <limits>
#include <stdexcept>

#include "modula/routing/fixed.h"
#include "modula/util/error.h"

namespace modula {

void PolyRouterOptions::validate() const {
  static constexpr std::string_view kTag = "routing";
  if (n_tasks() <= 0) throw_error(kTag, "poly router: n_tasks must be positive");
  if (n_skills() <= 0) throw_error(kTag, "poly router: n_skills must be positive");
  if (n_splits() <= 0) throw_error(kTag, "poly router: n_splits must be positive");
  if (key().empty()) throw_error(kTag, "poly router: key must name a metadata entry");
}

PolyRouterImpl::PolyRouterImpl(const PolyRouterOptions& options_, std::shared_ptr<RoutingContext> context_)
    : options(options_), context(std::move(context_)) {
  options.validate();
  if (!context) throw_error("routing", "poly router needs a RoutingContext (task ids)");
  module_logits = register_parameter("module_logits", torch::empty({options.n_tasks(), num_modules()}));
  reset();
}

void PolyRouterImpl::reset() {
  torch::NoGradGuard no_grad;
  module_logits.uniform_(-1e-3, 1e-3);
}

torch::Tensor relaxed_bernoulli(const torch::Tensor& logits, double temperature) {
  // u clamped away from {0, 1} as torch.distributions does (clamp_probs).
  auto eps = std::numeric_limits<float>::epsilon();
  auto u = torch::rand_like(logits).clamp(eps, 1 - eps);
  return torch::sigmoid((logits + u.log() - (-u).log1p()) / temperature);
}

torch::Tensor PolyRouterImpl::skill_weights(const torch::Tensor& task_ids) {
  auto ids = task_ids.to(module_logits.device());
  check_row_ids(ids, options.key(), ids.size(0), options.n_tasks());
  if (ids.numel() && ids.min().item<int64_t>() < 0)
    throw_error("routing", "poly router: metadata '" + options.key() + "' has a negative task id");
  auto z = module_logits.index_select(0, ids).view({-1, options.n_splits(), options.n_skills()});
  auto w = is_training() && options.noise() ? relaxed_bernoulli(z) : torch::sigmoid(z);
  return w / (w.sum(-1, /*keepdim=*/true) + 1e-12);  // Ponti et al. 2022, eq. 4
}

Routing PolyRouterImpl::route(const torch::Tensor& x) {
  auto ids = context->get(options.key());
  if (ids.size(0) != x.size(0))
    throw_error("routing", "metadata '" + options.key() + "' has " + std::to_string(ids.size(0)) +
                               " ids for a batch of " + std::to_string(x.size(0)) + " rows");
  return {skill_weights(ids).reshape({x.size(0), num_modules()}).to(x.scalar_type()), torch::Tensor()};
}

}  // namespace modula
