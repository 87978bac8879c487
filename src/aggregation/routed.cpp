#include "modula/aggregation/routed.h"

#include <stdexcept>

namespace modula {

RoutedImpl::RoutedImpl(std::shared_ptr<RouterImpl> router_, std::vector<std::shared_ptr<SiteModule>> children,
                       bool owns_router)
    : CompositeImpl("route", std::move(children)), router(std::move(router_)) {
  if (!router) throw std::invalid_argument("[route] the router is null");
  const auto M = router->num_modules(), C = static_cast<int64_t>(this->children().size());
  if (M != C)
    throw std::invalid_argument("[route] the router routes over " + std::to_string(M) + " modules, given " +
                                std::to_string(C));
  if (owns_router) register_module("router", router);
}

torch::Tensor RoutedImpl::transform_block(const torch::Tensor& x, const torch::Tensor& y) {
  auto r = router->route(x);
  const bool one_per_row = r.indices.defined() && !r.per_token() && r.indices.dim() == 2 && r.indices.size(1) == 1;
  if (!one_per_row) {  // y + Σ_c r_c d_c, r [N, C] or [N, T, C]
    auto w = r.per_token() ? r.weights : r.weights.unsqueeze(1);  // [N, T|1, C]
    auto d = contributions(x, y);                                   // [N, T, C, H]
    return y + torch::einsum("ntc,ntch->nth", {w.to(d.scalar_type()), d});
  }
  // One module per row: each child on its own rows, scaled by its routing weight.
  auto idx = r.indices.squeeze(1);
  auto w = r.weights.gather(1, r.indices.clamp_min(0)).squeeze(1).to(y.scalar_type());  // [N]; id −1 rows unused
  auto out = y.clone();
  for (int64_t c = 0; c < static_cast<int64_t>(children().size()); ++c) {
    auto rows = (idx == c).nonzero().squeeze(1);
    if (rows.numel() == 0) continue;
    auto yc = y.index_select(0, rows);
    auto dc = children()[c]->transform_block(x.index_select(0, rows), yc) - yc;
    auto wc = w.index_select(0, rows).view({-1, 1, 1});
    out = out.index_add(0, rows, wc * dc);
  }
  return out;
}

}  // namespace modula
