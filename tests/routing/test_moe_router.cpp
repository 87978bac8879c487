// Top-k router (Shazeer et al. 2017; Fedus et al. 2022; Zoph et al. 2022): top-k selection
// and renormalisation, load-balancing and z-loss against hand-computed values, padding
// masks, noise only in training, gradients, clear option errors.
#include <gtest/gtest.h>

#include <cmath>

#include "modula/routing/top_k.h"

namespace {

using modula::TopKRouter;
using modula::TopKRouterOptions;

// A router over 2 features and 3 experts with logits x W^T = [x0, x1, 0].
TopKRouter fixed_gate(TopKRouterOptions options, std::shared_ptr<modula::RoutingContext> ctx = nullptr) {
  auto router = TopKRouter(options, std::move(ctx));
  torch::NoGradGuard g;
  router->gate->weight.copy_(torch::tensor({1.f, 0.f, 0.f, 1.f, 0.f, 0.f}).view({3, 2}));
  return router;
}

// logits [ln 3, ln 2, 0] -> probabilities [1/2, 1/3, 1/6].
torch::Tensor token() { return torch::tensor({std::log(3.f), std::log(2.f)}).view({1, 1, 2}); }

TEST(MoeRouter, TopKSelectsAndRenormalises) {
  auto router = fixed_gate(TopKRouterOptions(2, 3).k(2));
  router->eval();
  auto r = router->route(token());
  ASSERT_EQ(r.weights.sizes(), (std::vector<int64_t>{1, 1, 3}));
  ASSERT_EQ(r.indices.sizes(), (std::vector<int64_t>{1, 1, 2}));
  EXPECT_EQ(r.indices[0][0][0].item<int64_t>(), 0);
  EXPECT_EQ(r.indices[0][0][1].item<int64_t>(), 1);
  // (1/2, 1/3) / (5/6) = (0.6, 0.4); the third expert is off.
  EXPECT_TRUE(torch::allclose(r.weights.view({3}), torch::tensor({0.6f, 0.4f, 0.f}), 1e-6, 1e-6));
  EXPECT_TRUE(r.per_token());
}

TEST(MoeRouter, WithoutRenormalisationKeepsTheProbabilities) {
  auto router = fixed_gate(TopKRouterOptions(2, 3).k(2).normalize(false));
  router->eval();
  auto r = router->route(token());
  EXPECT_TRUE(torch::allclose(r.weights.view({3}), torch::tensor({0.5f, 1.f / 3, 0.f}), 1e-6, 1e-6));
  auto top1 = fixed_gate(TopKRouterOptions(2, 3).k(1));
  top1->eval();
  EXPECT_TRUE(torch::allclose(top1->route(token()).weights.view({3}), torch::tensor({1.f, 0.f, 0.f})));
}

TEST(MoeRouter, LoadBalancingLossHandComputed) {
  // Switch: α E Σ f_i P_i. k = 1, argmax [0, 0, 1, 0]: f = [3/4, 1/4], P = [0.65, 0.35].
  auto probs = torch::tensor({0.9f, 0.1f, 0.8f, 0.2f, 0.3f, 0.7f, 0.6f, 0.4f}).view({4, 2});
  auto idx = probs.argmax(-1, /*keepdim=*/true);
  EXPECT_NEAR(modula::load_balancing_loss(probs, idx, {}, 0.1).item<double>(), 0.1 * 2 * 0.575, 1e-6);
  // Masking the last token: f = [2/3, 1/3], P = [2/3, 1/3] -> 2 (4/9 + 1/9) = 10/9.
  auto mask = torch::tensor({1, 1, 1, 0}).to(torch::kBool);
  EXPECT_NEAR(modula::load_balancing_loss(probs, idx, mask, 1.0).item<double>(), 10.0 / 9, 1e-6);
  // k = 2 over 3 experts: dispatches [[0,1],[1,2]] -> f = [1/4, 1/2, 1/4], P = [0.3, 0.45, 0.25].
  auto p3 = torch::tensor({0.5f, 0.3f, 0.2f, 0.1f, 0.6f, 0.3f}).view({2, 3});
  auto idx3 = torch::tensor({0, 1, 1, 2}, torch::kInt64).view({2, 2});
  EXPECT_NEAR(modula::load_balancing_loss(p3, idx3, {}, 1.0).item<double>(), 3 * 0.3625, 1e-6);
  // Perfect balance gives α.
  auto uniform = torch::full({4, 2}, 0.5f);
  auto alternating = torch::tensor({0, 1, 0, 1}, torch::kInt64).view({4, 1});
  EXPECT_NEAR(modula::load_balancing_loss(uniform, alternating, {}, 0.01).item<double>(), 0.01, 1e-8);
}

TEST(MoeRouter, ZLossHandComputed) {
  // logsumexp [0, 0] = ln 2, logsumexp [ln 3, 0] = ln 4: mean of squares = 2.5 (ln 2)^2.
  auto logits = torch::tensor({0.f, 0.f, std::log(3.f), 0.f}).view({2, 2});
  const double ln2 = std::log(2.0);
  EXPECT_NEAR(modula::router_z_loss(logits, {}, 0.1).item<double>(), 0.1 * 2.5 * ln2 * ln2, 1e-6);
  auto mask = torch::tensor({true, false});
  EXPECT_NEAR(modula::router_z_loss(logits, mask, 1.0).item<double>(), ln2 * ln2, 1e-6);
}

TEST(MoeRouter, AuxLossInTrainingOnlyAndMasksPadding) {
  const double a = 0.01, b = 0.001, ln6 = std::log(6.0);
  auto ctx = std::make_shared<modula::RoutingContext>();
  auto router = fixed_gate(TopKRouterOptions(2, 3).k(2).load_balance_coef(a).z_loss_coef(b), ctx);
  // Two tokens; the second is padding. The mask covers a cached past token too: [N, S = 3].
  auto x = torch::cat({token(), torch::tensor({5.f, -5.f}).view({1, 1, 2})}, 1);
  ctx->set_mask(torch::tensor({1, 1, 0}, torch::kInt64).view({1, 3}));
  router->train();
  router->route(x);
  ASSERT_TRUE(router->aux_loss.defined());
  // Token 0 alone: f = [1/2, 1/2, 0], P = [1/2, 1/3, 1/6] -> 3 · 5/12 = 1.25; z = (ln 6)^2.
  EXPECT_NEAR(router->aux_loss.item<double>(), 1.25 * a + b * ln6 * ln6, 1e-6);
  EXPECT_NEAR(modula::collect_aux_loss(*router).item<double>(), router->aux_loss.item<double>(), 1e-9);
  router->eval();
  router->route(x);
  EXPECT_FALSE(router->aux_loss.defined());
  ctx->set_mask(torch::ones({2, 3}));
  router->train();
  EXPECT_THROW(router->route(x), std::invalid_argument);  // mask rows differ from the batch
}

TEST(MoeRouter, NoiseOnlyInTrainingAndTrainable) {
  torch::manual_seed(0);
  auto router = TopKRouter(TopKRouterOptions(8, 4).k(2).noisy(true));
  auto x = torch::randn({2, 16, 8});
  router->eval();
  auto clean = router->route(x).weights;
  EXPECT_TRUE(torch::equal(clean, router->route(x).weights));
  router->train();
  auto noisy1 = router->route(x).weights, noisy2 = router->route(x).weights;
  EXPECT_FALSE(torch::allclose(noisy1, noisy2));
  // Each token keeps exactly k experts whose weights sum to 1.
  EXPECT_TRUE(torch::equal((noisy1 > 0).sum(-1), torch::full({2, 16}, 2, torch::kLong)));
  EXPECT_TRUE(torch::allclose(noisy1.sum(-1), torch::ones({2, 16})));
  // Gradients reach the gate and the noise gate.
  auto r = router->route(x);
  ((r.weights * torch::arange(4).to(torch::kFloat32)).sum() + router->aux_loss).backward();
  EXPECT_GT(router->gate->weight.grad().abs().sum().item<double>(), 0);
  EXPECT_GT(router->noise_gate->weight.grad().abs().sum().item<double>(), 0);
}

// Runs f, expecting std::invalid_argument whose message contains `part`.
template <typename F>
void expect_error(F f, const std::string& part) {
  try {
    f();
    ADD_FAILURE() << "expected an error mentioning '" << part << "'";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
  }
}

TEST(MoeRouter, ClearErrors) {
  expect_error([] { TopKRouter(TopKRouterOptions(8, 4).k(5)); }, "k must be in [1, num_experts = 4], got 5");
  expect_error([] { TopKRouter(TopKRouterOptions(8, 4).k(0)); }, "got 0");
  expect_error([] { TopKRouter(TopKRouterOptions(8, 0)); }, "num_experts must be positive");
  expect_error([] { TopKRouter(TopKRouterOptions(8, 4).load_balance_coef(-1)); }, "load_balance_coef");
  auto router = TopKRouter(TopKRouterOptions(8, 4));
  expect_error([&] { router->route(torch::randn({2, 3, 7})); }, "[2, 3, 7]");
}

}  // namespace
