#include "modula/composition/modular_linear.h"

#include <stdexcept>

#include "modula/util/error.h"

namespace modula {

ModularLinearImpl::ModularLinearImpl(std::shared_ptr<torch::nn::Module> module, std::shared_ptr<ModuleBank> bank,
                                     std::shared_ptr<RouterImpl> router_, const ModularLinearOptions& options_)
    : options(options_), router(std::move(router_)), bank_(std::move(bank)) {
  if (!module || !bank_ || !router) throw_error("modular linear", "needs a module bank and a router");
  if (router->num_modules() != bank_->num_modules())
    throw_error("modular linear", "router routes over " + std::to_string(router->num_modules()) +
                                      " modules, the bank holds " + std::to_string(bank_->num_modules()));
  register_module("bank", module);
  if (options.owns_router()) register_module("router", router);
}

std::shared_ptr<LoraBankImpl> ModularLinearImpl::lora_bank() const {
  auto lora = std::dynamic_pointer_cast<LoraBankImpl>(bank_);
  if (!lora) throw_error("modular linear", "the bank is a " + bank_->kind() + ", not a lora bank");
  return lora;
}

torch::Tensor ModularLinearImpl::transform_output(const torch::Tensor& x, const torch::Tensor& y,
                                                  const LinearImpl& base) {
  auto x3 = as_rows(x, "modular linear");  // [N, T, in]
  auto delta = algorithm1(*router, *bank_, options.aggregation(), {x3, y.reshape({x3.size(0), x3.size(1), -1}), &base},
                          &last_routing);
  return y.add(delta.reshape(y.sizes()), scale);  // y + scale · delta in one op
}

void ModularLinearImpl::merge(LinearImpl&) {
  throw std::logic_error("[modular linear] routed modules depend on the input and cannot be merged into the weights");
}

void ModularLinearImpl::unmerge(LinearImpl&) { throw std::logic_error("[modular linear] not merged"); }

}  // namespace modula
