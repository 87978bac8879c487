// Parallel: several children on the same input, their contributions summed:
//
//   y ← y + Σ_c (c(x, y) − y)
//
// With replicated(true) it is AdapterHub's parallel inference instead: the batch was
// replicated once per child (replicate_batch), block-major, and child c runs on the c-th
// block of rows only, so one forward gives every child's output side by side.
#pragma once

#include "modula/aggregation/composite.h"
#include "modula/backbone/backbone.h"

namespace modula {

class ParallelImpl : public CompositeImpl {
 public:
  explicit ParallelImpl(std::vector<std::shared_ptr<SiteModule>> children, bool replicated = false)
      : CompositeImpl("parallel", std::move(children)), replicated(replicated) {}
  torch::Tensor transform_block(const torch::Tensor& x, const torch::Tensor& y) override;

  bool replicated;
};
TORCH_MODULE(Parallel);

// The batch repeated n times along dim 0 (rows n·B: copy 0 of every row, then copy 1, …):
// input_ids / inputs_embeds / attention_mask / token_type_ids / position_ids.
// Throws std::invalid_argument for n < 1 or an input with a cache.
BackboneInput replicate_batch(const BackboneInput& in, int64_t n);

}  // namespace modula
