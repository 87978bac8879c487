// The survey's Algorithm 1 at a Linear site: a modular layer holding a bank of M modules,
// a routing function and an aggregation function.
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
#include "modula/routing/router.h"

namespace modula {

// How the active modules' contributions combine (survey §5).
enum class Aggregation {
  WeightedSum,       // output aggregation: Σ_m w_m f_m(x)
  ParameterAverage,  // parameter aggregation (SMEAR): f(x; Σ_m w_m φ_m), per-example weights
};

struct ModularLinearOptions {
  TORCH_ARG(Aggregation, aggregation) = Aggregation::WeightedSum;
  // false: the router is shared with other sites and registered by its owner, so its
  // parameters appear once in model.parameters().
  TORCH_ARG(bool, owns_router) = true;
};

class ModularLinearImpl : public SiteModule {
 public:
  // Throws std::invalid_argument when the router's module count differs from the bank's.
  ModularLinearImpl(LoraBank bank, std::shared_ptr<RouterImpl> router, const ModularLinearOptions& options = {});

  // Algorithm 1: route, compute the active modules, aggregate. x [.., in] with the batch first.
  torch::Tensor transform_output(const torch::Tensor& x, const torch::Tensor& y, const LinearImpl& base) override;
  // The modules' contribution for x [N, T, in] under routing r, [N, T, out].
  torch::Tensor aggregate(const torch::Tensor& x, const Routing& r) const;

  // Routing depends on the input: nothing to fold into the base weights.
  bool mergeable() const override { return false; }
  void merge(LinearImpl& base) override;
  void unmerge(LinearImpl& base) override;

  ModularLinearOptions options;
  LoraBank bank = nullptr;
  std::shared_ptr<RouterImpl> router;
  Routing last_routing;  // the routing of the last forward (for inspection)
};
TORCH_MODULE(ModularLinear);

}  // namespace modula
