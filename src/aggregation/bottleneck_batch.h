// Bottleneck adapters of several children computed together (internal to
// modula_aggregation): the soft mixing of a composite (every child on every row) and one
// child per row (a mixed batch, fixed or top-1 routing: each row reads its child's weights,
// gathered matmuls, no loop over children).
#pragma once

#include <optional>
#include <string>

#include "modula/backbone/site.h"

namespace modula::detail {

// The children's weights stacked on a leading child dimension C: down [C, m, H] + [C, m],
// up [C, H, m] + [C, H], scale s [C]. An identity placeholder stacks zeros (s = 0: d = 0).
struct BottleneckStack {
  torch::Tensor down_w, down_b, up_w, up_b, s;
  torch::Tensor ln_w, ln_b;  // [C, H] with ln_before (identity placeholders: 1 and 0), else undefined
  double ln_eps = 1e-5;
  std::string non_linearity;
  bool parallel = false;  // reads the block input x (else the block output y)
};

// The stack of a composite's children when each is an identity placeholder or a residual
// bottleneck adapter, all of one size, non-linearity, mode and LayerNorm setting (and eps),
// at least one of them an adapter. Without autograd the stack is kept between calls (re-stacked when a
// child's tensor is replaced or written in place, or its scale changes); with autograd it is
// stacked in the graph at every call (gradients reach the children's parameters).
class BottleneckStacker {
 public:
  // Null when the children do not qualify.
  const BottleneckStack* stack(const std::vector<std::shared_ptr<SiteModule>>& children);

 private:
  std::optional<BottleneckStack> stack_;
  std::vector<torch::Tensor> sources_;  // the children's tensors stack_ holds copies of (none: rebuild)
  std::vector<int64_t> versions_;
  std::vector<double> scales_;
};

// d_c = s_c (W_up,c act(W_down,c h + b_down,c) + b_up,c) for every c: [.., C, H].
torch::Tensor all_contributions(const BottleneckStack& st, const torch::Tensor& x, const torch::Tensor& y);

// Row n: w[n] d_{idx[n]}(x_n, y_n) for x, y [N, T, H], idx [N] (−1: 0), w [N] -> [N, T, H].
// One token per row without autograd on the CPU: two BGMV mat-vecs (modules/lora_kernels.h)
// read each row's weights from the stack; otherwise gathered copies and two bmm.
torch::Tensor row_contributions(const BottleneckStack& st, const torch::Tensor& x, const torch::Tensor& y,
                                const torch::Tensor& idx, const torch::Tensor& w);

}  // namespace modula::detail
