#include "modula/routing/algorithm1.h"

#include <stdexcept>

#include "modula/util/error.h"

namespace modula {

std::string to_string(Aggregation a) {
  switch (a) {
    case Aggregation::WeightedSum:
      return "weighted_sum";
    case Aggregation::Sum:
      return "sum";
    case Aggregation::ParameterAverage:
      return "parameter_average";
  }
  return "?";
}

Aggregation aggregation_from_string(const std::string& name) {
  for (auto a : {Aggregation::WeightedSum, Aggregation::Sum, Aggregation::ParameterAverage})
    if (to_string(a) == name) return a;
  throw_error("algorithm 1", "unknown aggregation '" + name + "' (choose from: weighted_sum, sum, parameter_average)");
}

torch::Tensor ModuleBank::averaged(const SiteInput&, const torch::Tensor&) {
  throw_error(kind(),
              "parameter averaging is not defined for these modules "
              "(they are not linear in their parameters); use weighted_sum");
}

torch::Tensor as_rows(const torch::Tensor& x, const char* where) {
  if (!x.defined() || x.dim() < 2)
    throw std::invalid_argument(std::string("[") + where + "] input " +
                                (x.defined() ? c10::str(x.sizes()) : "undefined") + " has no batch dimension");
  return x.reshape({x.size(0), -1, x.size(-1)});
}

torch::Tensor average_parameters(const torch::Tensor& w, const torch::Tensor& P) {
  if (w.dim() != 3 || P.dim() < 2 || w.size(1) != P.size(0) || w.size(2) != P.size(1))
    throw_error("algorithm 1", "parameter averaging: weights " + c10::str(w.sizes()) + " do not match parameters " +
                                   c10::str(P.sizes()) + " ([N, G, M] with [G, M, ...])");
  auto flat = P.reshape({P.size(0), P.size(1), -1});                        // [G, M, D]
  auto out = torch::einsum("ngm,gmd->ngd", {w.to(P.scalar_type()), flat});  // Σ_m w φ_m
  auto shape = P.sizes().vec();
  shape[1] = w.size(0);  // [G, N, ...] -> [N, G, ...]
  std::swap(shape[0], shape[1]);
  return out.reshape(shape);
}

torch::Tensor dense_weights(const torch::Tensor& idx, const torch::Tensor& w, int64_t M) {
  auto valid = (idx >= 0).to(w.scalar_type());
  auto shape = idx.sizes().vec();
  shape.back() = M;
  return torch::zeros(shape, w.options()).scatter_add(-1, idx.clamp_min(0), w * valid);
}

// Algorithm 1 (Pfeiffer et al. 2023): route, compute the selected modules, aggregate.
torch::Tensor algorithm1(RouterImpl& router, ModuleBank& bank, Aggregation aggregation, const SiteInput& in,
                         Routing* last) {
  if (router.num_modules() != bank.num_modules())
    throw_error("algorithm 1", "the router routes over " + std::to_string(router.num_modules()) + " modules, the " +
                                   bank.kind() + " holds " + std::to_string(bank.num_modules()));
  Routing r = router.route(in.x);  // route
  if (last) *last = {r.weights.detach(), r.indices};
  if (aggregation == Aggregation::ParameterAverage) return bank.averaged(in, r.weights);  // aggregate parameters
  if (!r.indices.defined()) {  // soft routing: every module, weighted
    auto w = aggregation == Aggregation::Sum ? (r.weights > 0).to(r.weights.scalar_type()) : r.weights;
    return bank.mixed(in, w);
  }
  auto w = aggregation == Aggregation::Sum ? torch::ones(r.indices.sizes(), r.weights.options())
                                           : r.weights.gather(-1, r.indices.clamp_min(0));
  return bank.selected(in, r.indices, w);  // compute only the selected modules, aggregate their outputs
}

}  // namespace modula
