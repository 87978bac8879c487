// Learned soft routing (survey §4.2.2): a linear scorer on the site input and a softmax
// over modules, per token or per example (mean of the non-padded positions).
//
//   w = softmax(W_r h + b_r),  h = x_t (per token) or mean_{t: mask_t = 1} x_t (per example)
//
// The padding mask reaches the router through its RoutingContext (ctx->set_mask(mask)).
// One router can serve several sites (one router shared across layers) when their
// inputs have the same width.
#pragma once

#include "modula/routing/router.h"

namespace modula {

struct SoftmaxRouterOptions {
  SoftmaxRouterOptions(int64_t in_features, int64_t num_modules)
      : in_features_(in_features), num_modules_(num_modules) {}
  TORCH_ARG(int64_t, in_features);
  TORCH_ARG(int64_t, num_modules);
  TORCH_ARG(bool, per_token) = false;    // false: one distribution per example
  TORCH_ARG(double, temperature) = 1.0;  // softmax(logits / temperature)

 public:
  void validate() const;  // std::invalid_argument naming the bad field
};

class SoftmaxRouterImpl : public RouterImpl {
 public:
  // `context` may be null: then every position counts as real when pooling.
  SoftmaxRouterImpl(const SoftmaxRouterOptions& options, std::shared_ptr<RoutingContext> context = nullptr);
  void reset();
  // x [N, T, in]: weights [N, M] (per example) or [N, T, M] (per token); indices undefined.
  Routing route(const torch::Tensor& x) override;
  int64_t num_modules() const override { return options.num_modules(); }
  // The routing logits before the softmax.
  torch::Tensor logits(const torch::Tensor& x) const;

  SoftmaxRouterOptions options;
  std::shared_ptr<RoutingContext> context;
  torch::Tensor weight, bias;  // [M, in], [M]
};
TORCH_MODULE(SoftmaxRouter);

// Mean of x [N, T, H] over positions with mask 1; mask [N, S] with S >= T (cached decoding:
// its last T columns belong to x), undefined = plain mean.
torch::Tensor masked_mean(const torch::Tensor& x, const torch::Tensor& mask);

}  // namespace modula
