// Stack (MAD-X, Pfeiffer et al. 2020): the children in sequence at a block site, the
// output of one the input of the next:
//
//   y ← c_k(x, … c_2(x, c_1(x, y)))
//
// e.g. a language adapter then a task adapter. Same as attaching them in that order at
// the site, but usable as a node inside other compositions.
#pragma once

#include "modula/aggregation/composite.h"

namespace modula {

class StackImpl : public CompositeImpl {
 public:
  explicit StackImpl(std::vector<std::shared_ptr<SiteModule>> children) : CompositeImpl("stack", std::move(children)) {}
  torch::Tensor transform_block(const torch::Tensor& x, const torch::Tensor& y) override;
};
TORCH_MODULE(Stack);

}  // namespace modula
