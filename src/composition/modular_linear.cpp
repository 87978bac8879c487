#include "modula/composition/modular_linear.h"

#include <stdexcept>

namespace modula {

ModularLinearImpl::ModularLinearImpl(LoraBank bank_, std::shared_ptr<RouterImpl> router_, const ModularLinearOptions& options_)
    : options(options_), bank(std::move(bank_)), router(std::move(router_)) {
  if (!bank || !router) throw std::invalid_argument("[modular linear] needs a module bank and a router");
  if (router->num_modules() != bank->num_modules())
    throw std::invalid_argument("[modular linear] router routes over " + std::to_string(router->num_modules()) +
                                " modules, the bank holds " + std::to_string(bank->num_modules()));
  register_module("bank", bank);
  if (options.owns_router()) register_module("router", router);
}

torch::Tensor ModularLinearImpl::aggregate(const torch::Tensor& x, const Routing& r) const {
  if (options.aggregation() == Aggregation::ParameterAverage) return bank->averaged(x, r.weights);
  if (r.indices.defined() && !r.per_token())  // hard per-example routing: only the k routed modules run
    return bank->selected(x, r.indices, r.weights.gather(1, r.indices.clamp_min(0)));
  return bank->mixed(x, r.weights);
}

// Algorithm 1 (Pfeiffer et al. 2023): w = r(x); y + Σ aggregation of the active modules.
torch::Tensor ModularLinearImpl::transform_output(const torch::Tensor& x, const torch::Tensor& y, const LinearImpl& base) {
  if (x.dim() < 2) throw std::invalid_argument("[modular linear] input " + c10::str(x.sizes()) + " has no batch dimension");
  auto x3 = x.reshape({x.size(0), -1, x.size(-1)});  // [N, T, in]
  auto routing = router->route(x3);
  last_routing = {routing.weights.detach(), routing.indices};
  return y + scale * aggregate(x3, routing).reshape(y.sizes());
}

void ModularLinearImpl::merge(LinearImpl&) {
  throw std::logic_error("[modular linear] routed modules depend on the input and cannot be merged into the weights");
}

void ModularLinearImpl::unmerge(LinearImpl&) { throw std::logic_error("[modular linear] not merged"); }

}  // namespace modula
