// Routed aggregation: a router (routing/router.h) weighs the children per example or per
// token, and their contributions are mixed by those weights:
//
//   y_n ← y_n + Σ_c r_{n,c} d_c(x_n, y_n)        (r [N, C] or [N, T, C])
//
// Hard routing with one module per example (fixed routing by task/language id, top-1;
// routing/fixed.h; id −1: no module for that row) costs one adapter per row, not C:
// residual bottleneck adapters of one shape as gathered matmuls over their stacked weights
// (each row reads its child's, one batched call for all rows), other children each on its
// own rows (index_select / index_add per child).
#pragma once

#include "modula/aggregation/composite.h"
#include "modula/routing/algorithm1.h"
#include "modula/routing/router.h"

namespace modula {

// The composite is the bank of its children (algorithm1.h): route(...) = this bank + the
// router + WeightedSum.
class RoutedImpl : public CompositeImpl, public ModuleBank {
 public:
  // Throws std::invalid_argument if the router is null or routes over a different
  // number of modules than there are children. owns_router false: the router is shared
  // with other sites and registered by its owner (its parameters appear once).
  RoutedImpl(std::shared_ptr<RouterImpl> router, std::vector<std::shared_ptr<SiteModule>> children,
             bool owns_router = true);
  torch::Tensor transform_block(const torch::Tensor& x, const torch::Tensor& y) override;

  // ModuleBank over the children, contributions d_c(x, y) = c(x, y) − y. selected with one
  // child per row runs each child on its rows only; otherwise every child runs (mixed).
  torch::Tensor selected(const SiteInput& in, const torch::Tensor& idx, const torch::Tensor& w) override;
  torch::Tensor mixed(const SiteInput& in, const torch::Tensor& w) override;
  int64_t num_modules() const override { return static_cast<int64_t>(children().size()); }
  std::string kind() const override { return "route"; }

  std::shared_ptr<RouterImpl> router;  // registered as "router" when owned
};
TORCH_MODULE(Routed);

}  // namespace modula
