// Routing functions: fixed (metadata), softmax (learned, per token / per example), Poly.
#include <gtest/gtest.h>

#include "modula/routing/fixed.h"
#include "modula/routing/poly.h"
#include "modula/routing/softmax.h"
#include "support/errors.h"

using namespace modula;

using modula::testing::error_of;

TEST(FixedRouter, OneHotPerRowAndNoneForMinusOne) {
  auto ctx = std::make_shared<RoutingContext>();
  FixedRouter router(FixedRouterOptions(3).key("lang"), ctx);
  ctx->set("lang", torch::tensor({2, -1, 0}));
  auto r = router->route(torch::zeros({3, 5, 4}));
  EXPECT_TRUE(torch::equal(r.weights, torch::tensor({{0., 0., 1.}, {0., 0., 0.}, {1., 0., 0.}})));
  EXPECT_TRUE(torch::equal(r.indices, torch::tensor({{2}, {-1}, {0}})));
  EXPECT_FALSE(r.per_token());
}

TEST(FixedRouter, ErrorsNameKeyAndProblem) {
  auto ctx = std::make_shared<RoutingContext>();
  FixedRouter router(FixedRouterOptions(3).key("task"), ctx);
  auto x = torch::zeros({2, 1, 4});
  EXPECT_NE(error_of<std::invalid_argument>([&] { router->route(x); }).find("no metadata 'task'"), std::string::npos);
  ctx->set("task", torch::tensor({0, 1, 2}));
  EXPECT_NE(error_of<std::invalid_argument>([&] { router->route(x); }).find("'task' has 3 ids for a batch of 2 rows"),
            std::string::npos);
  ctx->set("task", torch::tensor({0, 3}));
  EXPECT_NE(error_of<std::invalid_argument>([&] { router->route(x); }).find("id 3 outside [-1, 3)"), std::string::npos);
  ctx->set("task", torch::tensor({-2, 0}));
  EXPECT_NE(error_of<std::invalid_argument>([&] { router->route(x); }).find("id -2"), std::string::npos);
  EXPECT_NE(error_of<std::invalid_argument>([] { FixedRouterOptions(0).validate(); }).find("num_modules"),
            std::string::npos);
}

// The routing is cached per id tensor: a new tensor, an in-place change of the ids or another
// dtype routes afresh.
TEST(FixedRouter, CachedRoutingFollowsTheIds) {
  auto ctx = std::make_shared<RoutingContext>();
  FixedRouter router(FixedRouterOptions(3), ctx);
  auto x = torch::zeros({2, 1, 4});
  ctx->set("task", torch::tensor({1, 0}));
  EXPECT_TRUE(torch::equal(router->route(x).indices, torch::tensor({{1}, {0}})));
  EXPECT_TRUE(torch::equal(router->route(x).weights, torch::tensor({{0., 1., 0.}, {1., 0., 0.}})));
  ctx->set("task", torch::tensor({2, -1}));
  EXPECT_TRUE(torch::equal(router->route(x).weights, torch::tensor({{0., 0., 1.}, {0., 0., 0.}})));
  ctx->get("task")[1] = 0;  // in place
  EXPECT_TRUE(torch::equal(router->route(x).weights, torch::tensor({{0., 0., 1.}, {1., 0., 0.}})));
  EXPECT_EQ(router->route(x.to(torch::kFloat64)).weights.scalar_type(), torch::kFloat64);
  ctx->get("task")[1] = 3;  // in place, out of range: validated again
  EXPECT_THROW(router->route(x), std::invalid_argument);
}

TEST(SoftmaxRouter, PerExamplePoolsOnlyRealPositions) {
  torch::manual_seed(0);
  auto ctx = std::make_shared<RoutingContext>();
  SoftmaxRouter router(SoftmaxRouterOptions(8, 4), ctx);
  torch::NoGradGuard no_grad;
  router->weight.normal_();
  auto x = torch::randn({2, 5, 8});
  ctx->set_mask(torch::tensor({{0, 1, 1, 1, 1}, {1, 1, 1, 0, 0}}));
  auto w = router->route(x).weights;
  ASSERT_EQ(w.sizes(), (std::vector<int64_t>{2, 4}));
  EXPECT_TRUE(torch::allclose(w.sum(-1), torch::ones({2})));
  auto y = x.clone();  // padded positions changed: routing unchanged
  y[0][0].normal_();
  y[1][4].normal_();
  EXPECT_TRUE(torch::allclose(router->route(y).weights, w));
  // Row 1 pools positions 0..2 only.
  auto want =
      torch::softmax(torch::nn::functional::linear(x[1].slice(0, 0, 3).mean(0), router->weight, router->bias), -1);
  EXPECT_TRUE(torch::allclose(w[1], want, 1e-5, 1e-6));
}

TEST(SoftmaxRouter, PerTokenAndMaskCoversCachedPositions) {
  torch::manual_seed(0);
  auto ctx = std::make_shared<RoutingContext>();
  SoftmaxRouter token(SoftmaxRouterOptions(8, 3).per_token(true), ctx);
  auto x = torch::randn({2, 5, 8});
  EXPECT_EQ(token->route(x).weights.sizes(), (std::vector<int64_t>{2, 5, 3}));
  SoftmaxRouter example(SoftmaxRouterOptions(8, 3), ctx);
  ctx->set_mask(torch::ones({2, 9}));  // 4 cached positions + 5 new: the last 5 columns are x's
  EXPECT_TRUE(torch::allclose(example->route(x).weights,
                              torch::softmax(example->logits(x.mean(1).unsqueeze(1)).squeeze(1), -1), 1e-5, 1e-6));
  ctx->set_mask(torch::ones({2, 3}));
  EXPECT_NE(error_of<std::invalid_argument>([&] { example->route(x); }).find("does not cover"), std::string::npos);
  EXPECT_NE(error_of<std::invalid_argument>([&] {
              example->route(torch::randn({2, 5, 7}));
            }).find("width 8"),
            std::string::npos);
}

TEST(PolyRouter, EvalIsNormalisedSigmoidPerSplit) {
  auto ctx = std::make_shared<RoutingContext>();
  PolyRouter router(PolyRouterOptions(4, 3).n_splits(2), ctx);
  {
    torch::NoGradGuard no_grad;
    router->module_logits.copy_(torch::randn({4, 6}));
  }
  router->eval();
  ctx->set("task", torch::tensor({3, 0}));
  auto w = router->route(torch::zeros({2, 7, 5})).weights;
  ASSERT_EQ(w.sizes(), (std::vector<int64_t>{2, 6}));
  auto s = torch::sigmoid(router->module_logits.index_select(0, torch::tensor({3, 0})).view({2, 2, 3}));
  EXPECT_TRUE(torch::allclose(w.view({2, 2, 3}), s / s.sum(-1, true), 1e-6, 1e-7));
  EXPECT_TRUE(torch::equal(router->route(torch::zeros({2, 7, 5})).weights, w));  // deterministic
}

TEST(PolyRouter, TrainSamplesRelaxedBernoulliWithGradient) {
  torch::manual_seed(1);
  auto ctx = std::make_shared<RoutingContext>();
  PolyRouter router(PolyRouterOptions(2, 4).n_splits(2), ctx);
  router->train();
  ctx->set("task", torch::tensor({1, 1, 0}));
  auto x = torch::zeros({3, 1, 5});
  auto w1 = router->route(x).weights, w2 = router->route(x).weights;
  EXPECT_FALSE(torch::allclose(w1, w2));  // stochastic in training
  EXPECT_TRUE(torch::allclose(w1.view({3, 2, 4}).sum(-1), torch::ones({3, 2}), 1e-5, 1e-6));
  EXPECT_TRUE((w1 >= 0).all().item<bool>());
  (w1 * torch::arange(24, torch::kFloat).view({3, 8})).sum().backward();
  auto g = router->module_logits.grad();
  ASSERT_TRUE(g.defined());
  EXPECT_GT(g.abs().sum().item<double>(), 0);
  ctx->set("task", torch::tensor({2, 0, 0}));
  EXPECT_NE(error_of<std::invalid_argument>([&] { router->route(x); }).find("id 2 outside"), std::string::npos);
}

TEST(RelaxedBernoulli, MeanMatchesBernoulliProbabilityAtLowTemperature) {
  torch::manual_seed(2);
  auto logits = torch::full({20000}, 0.8);
  auto hard = relaxed_bernoulli(logits, 0.05).gt(0.5).to(torch::kFloat).mean().item<double>();
  EXPECT_NEAR(hard, 1.0 / (1.0 + std::exp(-0.8)), 0.02);
}
