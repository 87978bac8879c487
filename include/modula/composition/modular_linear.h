// A routed Linear site: a bank of M modules (LoRA family or (IA)³, algorithm1.h), a
// routing function and an aggregation function, run as the survey's Algorithm 1:
//
//   y ← y + Σ_{active m} w_m f_m(x)            (aggregate outputs), or
//   y ← y + f(x; Σ_m w_m φ_m)                   (aggregate parameters, SMEAR)
//   where w = r(x) comes from the router.
//
//   auto ctx = std::make_shared<modula::RoutingContext>();
//   auto layer = modula::ModularLinear(bank, modula::FixedRouter(FixedRouterOptions(3), ctx).ptr());
//   site->attach("tasks", layer.ptr());
//   ctx->set("task", ids);                      // then model->forward(...)
#pragma once

#include "modula/backbone/layers.h"
#include "modula/composition/lora_bank.h"
#include "modula/routing/algorithm1.h"
#include "modula/routing/router.h"

namespace modula {

struct ModularLinearOptions {
  TORCH_ARG(Aggregation, aggregation) = Aggregation::WeightedSum;
  // false: the router is shared with other sites and registered by its owner, so its
  // parameters appear once in model.parameters().
  TORCH_ARG(bool, owns_router) = true;
};

class ModularLinearImpl : public SiteModule {
 public:
  // Any Linear-site bank (a torch::nn::Module that is a ModuleBank: LoraBankImpl,
  // Ia3BankImpl). Throws std::invalid_argument when the router's module count differs
  // from the bank's.
  template <class Bank>
  ModularLinearImpl(std::shared_ptr<Bank> bank, std::shared_ptr<RouterImpl> router,
                    const ModularLinearOptions& options = {})
      : ModularLinearImpl(std::static_pointer_cast<torch::nn::Module>(bank), std::static_pointer_cast<ModuleBank>(bank),
                          std::move(router), options) {}
  template <class Bank>
  ModularLinearImpl(torch::nn::ModuleHolder<Bank> bank, std::shared_ptr<RouterImpl> router,
                    const ModularLinearOptions& options = {})
      : ModularLinearImpl(bank.ptr(), std::move(router), options) {}
  ModularLinearImpl(std::shared_ptr<torch::nn::Module> module, std::shared_ptr<ModuleBank> bank,
                    std::shared_ptr<RouterImpl> router, const ModularLinearOptions& options);

  // Algorithm 1: route, compute the active modules, aggregate. x [.., in] with the batch first.
  torch::Tensor transform_output(const torch::Tensor& x, const torch::Tensor& y, const LinearImpl& base) override;

  // Routing depends on the input: nothing to fold into the base weights.
  bool mergeable() const override { return false; }
  void merge(LinearImpl& base) override;
  void unmerge(LinearImpl& base) override;

  ModuleBank& bank() const { return *bank_; }
  // The bank as a LoRA bank; std::invalid_argument when it is another kind.
  std::shared_ptr<LoraBankImpl> lora_bank() const;

  ModularLinearOptions options;
  std::shared_ptr<RouterImpl> router;
  Routing last_routing;  // the routing of the last forward (for inspection)

 private:
  std::shared_ptr<ModuleBank> bank_;
};
TORCH_MODULE(ModularLinear);

}  // namespace modula
