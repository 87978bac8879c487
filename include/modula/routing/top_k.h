// Learned hard routing (survey §4.2.2): a token-level top-k gate, the router of sparse
// mixture-of-experts layers (Shazeer et al. 2017; Fedus et al. 2022; Zoph et al. 2022).
//
//   logits  h(x) = x W_g                      (+ ε · softplus(x W_noise), ε ~ N(0, 1), training only)
//   probs   p(x) = softmax(h(x))               over the E experts
//   routing the k largest p_i; weights p_i / Σ_top-k p_j  (renormalised; or p_i as is)
//
// Training losses left in aux_loss after each forward in training mode:
//   load balancing (Switch, Fedus et al. 2022, eq. 4):  α · E · Σ_i f_i · P_i
//     f_i = share of the token→expert dispatches that go to expert i (Σ f_i = 1; k = 1 is
//     Switch's definition), P_i = mean router probability of expert i
//   router z-loss (ST-MoE, Zoph et al. 2022, eq. 5):    β · mean_tokens (logsumexp h(x))²
// Padding tokens (mask 0 in the RoutingContext's mask, when one is given) are left out of
// both means.
//
//   auto router = modula::TopKRouter(modula::TopKRouterOptions(64, 8).k(2).noisy(true));
//   auto r = router->route(x);      // x [N, T, 64]: r.weights [N, T, 8], r.indices [N, T, 2]
#pragma once

#include "modula/routing/router.h"

namespace modula {

struct TopKRouterOptions {
  TopKRouterOptions(int64_t features, int64_t num_experts) : features_(features), num_experts_(num_experts) {}
  TORCH_ARG(int64_t, features);                 // H, the size of the routed hidden state
  TORCH_ARG(int64_t, num_experts);              // E
  TORCH_ARG(int64_t, k) = 2;                    // experts per token, 1 ≤ k ≤ E
  TORCH_ARG(bool, noisy) = false;               // Shazeer et al. 2017 tunable Gaussian noise (training only)
  TORCH_ARG(bool, normalize) = true;            // renormalise the top-k probabilities to sum to 1
  TORCH_ARG(double, load_balance_coef) = 0.01;  // α (0: off)
  TORCH_ARG(double, z_loss_coef) = 0.001;       // β (0: off)

 public:  // TORCH_ARG leaves the section private
  // Throws std::invalid_argument naming the bad field.
  void validate() const;
};

class TopKRouterImpl : public RouterImpl {
 public:
  // `context` (optional) carries the padding mask [N, S] (RoutingContext::set_mask); its last
  // T columns mark the real tokens of x [N, T, H] (S > T when decoding with a KV cache).
  explicit TopKRouterImpl(const TopKRouterOptions& options, std::shared_ptr<RoutingContext> context = nullptr);
  // W_g: torch.nn.Linear's kaiming-uniform init; W_noise = 0 (Shazeer et al. 2017).
  void reset();

  // x [.., H] -> weights [.., E] (zero outside the top k), indices [.., k] in descending order.
  Routing route(const torch::Tensor& x) override;
  int64_t num_modules() const override { return options.num_experts(); }
  // The clean gate logits x W_g, [.., E].
  torch::Tensor logits(const torch::Tensor& x) const;
  // The real-token mask [..] (bool) for x [.., H] from the context; undefined when none.
  torch::Tensor token_mask(const torch::Tensor& x) const;

  TopKRouterOptions options;
  std::shared_ptr<RoutingContext> context;
  torch::nn::Linear gate{nullptr};        // W_g [E, H], no bias
  torch::nn::Linear noise_gate{nullptr};  // W_noise [E, H] when noisy
};
TORCH_MODULE(TopKRouter);

// α · E · Σ_i f_i P_i for router probabilities `probs` [.., E] and chosen experts
// `indices` [.., k]; `mask` [..] (bool, optional) keeps the real tokens only.
torch::Tensor load_balancing_loss(const torch::Tensor& probs, const torch::Tensor& indices, const torch::Tensor& mask,
                                  double coef);
// β · mean over tokens of (logsumexp logits)², `logits` [.., E], `mask` as above.
torch::Tensor router_z_loss(const torch::Tensor& logits, const torch::Tensor& mask, double coef);

}  // namespace modula
