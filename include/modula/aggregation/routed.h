// Routed aggregation: a router (routing/router.h) weighs the children per example or per
// token, and their contributions are mixed by those weights:
//
//   y_n ← y_n + Σ_c r_{n,c} d_c(x_n, y_n)        (r [N, C] or [N, T, C])
//
// Hard routing with one module per example (fixed routing by task/language id, top-1;
// routing/fixed.h) runs each child on its own rows only (id −1: no module for that row) (index_select / index_copy per child), so the
// cost is one adapter per row, not C.
#pragma once

#include "modula/aggregation/composite.h"
#include "modula/routing/router.h"

namespace modula {

class RoutedImpl : public CompositeImpl {
 public:
  // Throws std::invalid_argument if the router is null or routes over a different
  // number of modules than there are children. owns_router false: the router is shared
  // with other sites and registered by its owner (its parameters appear once).
  RoutedImpl(std::shared_ptr<RouterImpl> router, std::vector<std::shared_ptr<SiteModule>> children,
             bool owns_router = true);
  torch::Tensor transform_block(const torch::Tensor& x, const torch::Tensor& y) override;

  std::shared_ptr<RouterImpl> router;  // registered as "router" when owned
};
TORCH_MODULE(Routed);

}  // namespace modula
