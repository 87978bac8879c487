#include "modula/aggregation/routed.h"

#include <stdexcept>

#include "aggregation/bottleneck_batch.h"
#include "modula/util/error.h"

namespace modula {

RoutedImpl::RoutedImpl(std::shared_ptr<RouterImpl> router_, std::vector<std::shared_ptr<SiteModule>> children,
                       bool owns_router)
    : CompositeImpl("route", std::move(children)), router(std::move(router_)) {
  if (!router) throw_error("route", "the router is null");
  const auto M = router->num_modules(), C = static_cast<int64_t>(this->children().size());
  if (M != C)
    throw_error("route", "the router routes over " + std::to_string(M) + " modules, given " + std::to_string(C));
  if (owns_router) register_module("router", router);
}

torch::Tensor RoutedImpl::transform_block(const torch::Tensor& x, const torch::Tensor& y) {
  return y + algorithm1(*router, *this, Aggregation::WeightedSum, {x, y, nullptr});
}

torch::Tensor RoutedImpl::mixed(const SiteInput& in, const torch::Tensor& r) {  // Σ_c r_c d_c, r [N, C] or [N, T, C]
  auto w = r.dim() == 3 ? r : r.unsqueeze(1);                                   // [N, T|1, C]
  auto d = contributions(in.x, in.y);                                           // [N, T, C, H]
  return torch::einsum("ntc,ntch->nth", {w.to(d.scalar_type()), d});
}

torch::Tensor RoutedImpl::selected(const SiteInput& in, const torch::Tensor& idx, const torch::Tensor& w) {
  if (idx.dim() != 2 || idx.size(1) != 1) return mixed(in, dense_weights(idx, w, num_modules()));
  const auto& x = in.x;
  const auto& y = in.y;
  auto rows_of = idx.squeeze(1);
  // Bottleneck adapters: every row reads its child's weights (gathered matmuls).
  if (const auto* st = bottleneck_stack()) return detail::row_contributions(*st, x, y, rows_of, w.squeeze(1));
  // Other children: each on its own rows, scaled by its routing weight.
  auto weight = (w.squeeze(1) * (rows_of >= 0)).to(y.scalar_type());  // [N]; id −1 rows get nothing
  auto out = torch::zeros_like(y);
  for (int64_t c = 0; c < num_modules(); ++c) {
    auto rows = (rows_of == c).nonzero().squeeze(1);
    if (rows.numel() == 0) continue;
    auto yc = y.index_select(0, rows);
    auto dc = children()[c]->transform_block(x.index_select(0, rows), yc) - yc;
    out = out.index_add(0, rows, weight.index_select(0, rows).view({-1, 1, 1}) * dc);
  }
  return out;
}

}  // namespace modula
