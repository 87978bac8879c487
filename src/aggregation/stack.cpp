#include "modula/aggregation/stack.h"

namespace modula {

// y ← c_k(x, … c_1(x, y))  (Pfeiffer et al. 2020, MAD-X)
torch::Tensor StackImpl::transform_block(const torch::Tensor& x, const torch::Tensor& y) {
  auto out = y;
  for (auto& c : children()) out = c->transform_block(x, out);
  return out;
}

}  // namespace modula
