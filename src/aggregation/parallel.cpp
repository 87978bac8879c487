#include "modula/aggregation/parallel.h"

#include <stdexcept>

#include "modula/util/error.h"

namespace modula {

torch::Tensor ParallelImpl::transform_block(const torch::Tensor& x, const torch::Tensor& y) {
  if (!replicated) return y + contributions(x, y).sum(-2);  // y + Σ_c d_c
  // AdapterHub parallel inference: rows [c·B, (c+1)·B) belong to child c.
  const int64_t C = static_cast<int64_t>(children().size());
  if (y.size(0) % C != 0)
    throw_error("parallel", "batch of " + std::to_string(y.size(0)) + " rows is not " + std::to_string(C) +
                                " replicas (use replicate_batch)");
  auto xs = x.chunk(C, 0), ys = y.chunk(C, 0);
  std::vector<torch::Tensor> out;
  for (int64_t c = 0; c < C; ++c) out.push_back(children()[c]->transform_block(xs[c], ys[c]));
  return torch::cat(out, 0);
}

BackboneInput replicate_batch(const BackboneInput& in, int64_t n) {
  if (n < 1) throw_error("parallel", "replicate_batch needs n >= 1, got " + std::to_string(n));
  if (in.cache) throw_error("parallel", "replicate_batch takes the first step (no cache)");
  auto rep = [n](const torch::Tensor& t) {
    if (!t.defined()) return t;
    std::vector<int64_t> times(t.dim(), 1);
    times[0] = n;
    return t.repeat(times);
  };
  BackboneInput out = in;
  out.input_ids = rep(in.input_ids);
  out.inputs_embeds = rep(in.inputs_embeds);
  out.attention_mask = rep(in.attention_mask);
  out.token_type_ids = rep(in.token_type_ids);
  out.position_ids = rep(in.position_ids);
  return out;
}

}  // namespace modula
