// The one training loop: accumulation equals a larger batch, clipping, schedule lrs per
// group, router aux losses, clear errors for NaN/inf losses and gradients, option checks.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "modula/routing/router.h"
#include "modula/train/config.h"
#include "modula/train/loop.h"
#include "support/errors.h"

using namespace modula::train;
using modula::testing::error_of;

namespace {

torch::Tensor param(torch::Tensor values) { return values.clone().set_requires_grad(true); }

LoopOptions sgd(int64_t total, int64_t accum = 1) {
  LoopOptions o;
  o.optimizer = OptimizerKind::SGD;
  o.total_steps = total;
  o.grad_accum = accum;
  return o;
}

// A router whose forward leaves coef · ‖w‖² in aux_loss, as MoE routers leave their losses.
class SquareRouterImpl : public modula::RouterImpl {
 public:
  explicit SquareRouterImpl(double c) : coef(c) { w = register_parameter("w", torch::tensor({1.0f, 2.0f})); }
  modula::Routing route(const torch::Tensor& x) override {
    aux_loss = coef * w.pow(2).sum();
    return {torch::ones({x.size(0), 1}), {}};
  }
  int64_t num_modules() const override { return 1; }
  double coef;
  torch::Tensor w;
};
TORCH_MODULE(SquareRouter);

}  // namespace

// Two micro-batches of 4 rows (mean loss each) accumulate to the gradient of one batch of
// 8: the same update and the same reported loss and gradient norm.
TEST(TrainLoop, AccumulationEqualsOneLargerBatch) {
  torch::manual_seed(0);
  auto x = torch::randn({8, 4}), y = torch::randn({8, 3}), w0 = torch::randn({4, 3});
  auto mse = [](const torch::Tensor& w, const torch::Tensor& xs, const torch::Tensor& ys) {
    return (xs.matmul(w) - ys).pow(2).mean();
  };
  auto w_big = param(w0), w_acc = param(w0), w_single = param(w0);
  TrainLoop big({{{w_big}, 0.1}}, sgd(3));
  TrainLoop acc({{{w_acc}, 0.1}}, sgd(3, 2));
  TrainLoop single({{{w_single}, 0.1}}, sgd(3));  // one half only: must differ
  for (int s = 0; s < 3; ++s) {
    auto a = big.step([&](int64_t) { return mse(w_big, x, y); });
    auto b = acc.step([&](int64_t m) { return mse(w_acc, x.narrow(0, 4 * m, 4), y.narrow(0, 4 * m, 4)); });
    single.step([&](int64_t) { return mse(w_single, x.narrow(0, 0, 4), y.narrow(0, 0, 4)); });
    EXPECT_NEAR(a.loss, b.loss, 1e-6);
    EXPECT_NEAR(a.grad_norm, b.grad_norm, 1e-5);
    EXPECT_EQ(b.step, s + 1);
  }
  EXPECT_TRUE(torch::allclose(w_big, w_acc, 1e-6, 1e-6)) << (w_big - w_acc).abs().max().item<double>();
  EXPECT_FALSE(torch::allclose(w_big, w_single, 1e-4, 1e-4));
  EXPECT_FALSE(torch::allclose(w_big, w0, 1e-4, 1e-4));
}

// loss = c · w has gradient c (‖c‖ = 5): clipped to 0.5 the SGD update is c / 10.
TEST(TrainLoop, ClipsTheGradientNorm) {
  auto c = torch::tensor({3.0f, 4.0f});
  for (double max_norm : {0.0, 0.5, 10.0}) {
    auto w = param(torch::zeros({2}));
    auto o = sgd(1);
    o.max_grad_norm = max_norm;
    TrainLoop loop({{{w}, 1.0}}, o);
    auto st = loop.step([&](int64_t) { return (c * w).sum(); });
    EXPECT_NEAR(st.grad_norm, 5.0, 1e-6);  // before clipping
    double scale = max_norm > 0 && max_norm < 5.0 ? max_norm / 5.0 : 1.0;
    EXPECT_TRUE(torch::allclose(w, -c * scale, 1e-5, 1e-6)) << max_norm << ": " << w;
  }
}

// Linear warmup over 2 steps, then cosine to 10% at step 10; every group follows its own
// peak, and the optimizer uses the scheduled lr (SGD: w moves by lr · grad).
TEST(TrainLoop, ScheduleSetsEachGroupsLr) {
  auto a = param(torch::zeros({1})), b = param(torch::zeros({1}));
  auto o = sgd(10);
  o.schedule = Schedule::Cosine, o.warmup_steps = 2, o.min_lr_ratio = 0.1;
  TrainLoop loop({{{a}, 1.0}, {{b}, 0.1}}, o);
  std::vector<double> lrs;
  double moved_a = 0;
  loop.run([&](int64_t) { return a.sum() + b.sum(); },
           [&](const StepStats& s) {
             lrs.push_back(s.lr);
             moved_a += s.lr;
             EXPECT_NEAR(loop.optimizer().param_groups()[1].options().get_lr(), 0.1 * s.lr, 1e-12);
           });
  ASSERT_EQ(lrs.size(), 10u);
  EXPECT_DOUBLE_EQ(lrs[0], 0.5);
  EXPECT_DOUBLE_EQ(lrs[1], 1.0);
  const double pi = std::acos(-1.0);
  for (int s = 2; s < 10; ++s) EXPECT_NEAR(lrs[s], 0.1 + 0.9 * 0.5 * (1 + std::cos(pi * (s - 2) / 8.0)), 1e-12) << s;
  EXPECT_NEAR(-a.item<double>(), moved_a, 1e-5);
  EXPECT_NEAR(-b.item<double>(), 0.1 * moved_a, 1e-6);
  EXPECT_EQ(loop.steps_done(), 10);
  loop.set_steps_done(5);  // resume: the schedule continues from step 5
  EXPECT_DOUBLE_EQ(loop.lr_factor_at(5), lrs[5]);
}

TEST(TrainLoop, NanLossIsAClearErrorAndNoStepIsTaken) {
  auto w = param(torch::ones({2}));
  auto o = sgd(5);
  o.label = "[test] phase x";
  TrainLoop loop({{{w}, 0.1}}, o);
  int calls = 0;
  torch::Tensor before;
  auto msg = error_of<TrainError>([&] {
    loop.run([&](int64_t) -> MicroLoss {
      if (++calls == 3) {
        before = w.detach().clone();
        return {w.sum() * std::numeric_limits<double>::quiet_NaN(), 1.0, "task 'b'"};
      }
      return w.pow(2).sum();
    });
  });
  EXPECT_NE(msg.find("[test] phase x step 3: loss is NaN (task 'b')"), std::string::npos) << msg;
  EXPECT_TRUE(torch::equal(w.detach(), before));
  EXPECT_EQ(loop.steps_done(), 2);
  auto inf = error_of<TrainError>([&] { loop.step([&](int64_t) { return w.sum() + INFINITY; }); });
  EXPECT_NE(inf.find("loss is infinite"), std::string::npos) << inf;
}

// sqrt at 0: a finite loss with an infinite gradient.
TEST(TrainLoop, NonFiniteGradientNormIsAClearError) {
  auto w = param(torch::zeros({2}));
  TrainLoop loop({{{w}, 0.1}}, sgd(1));
  auto msg = error_of<TrainError>([&] { loop.step([&](int64_t) { return w.sqrt().sum(); }); });
  EXPECT_NE(msg.find("step 1: gradient norm is not finite"), std::string::npos) << msg;
  EXPECT_TRUE(torch::equal(w.detach(), torch::zeros({2})));
}

// The aux losses of the model's routers join the loss (and are reported apart); a router
// that did not run in a micro-batch contributes nothing (no stale loss).
TEST(TrainLoop, AddsRouterAuxLosses) {
  auto model = std::make_shared<torch::nn::Module>();
  auto router = model->register_module("router", SquareRouter(0.5));
  auto x = torch::ones({3, 2});
  TrainLoop loop({{router->parameters(), 0.1}}, sgd(2), model.get());
  auto st = loop.step([&](int64_t) {
    router->route(x);
    return router->w.sum() * 0;  // the task loss does not move w: the aux loss does
  });
  EXPECT_NEAR(st.aux_loss, 0.5 * 5.0, 1e-6);
  EXPECT_NEAR(st.loss, 0.0, 1e-12);
  EXPECT_NEAR(st.grad_norm, std::sqrt(1.0 + 4.0), 1e-5);  // d(0.5‖w‖²)/dw = w
  EXPECT_TRUE(torch::allclose(router->w, torch::tensor({0.9f, 1.8f})));
  auto quiet = loop.step([&](int64_t) { return router->w.sum(); });
  EXPECT_EQ(quiet.aux_loss, 0.0);
  EXPECT_NEAR(quiet.grad_norm, std::sqrt(2.0), 1e-6);
}

TEST(TrainLoop, BadOptionsAndGroupsNameTheField) {
  auto w = param(torch::zeros({2}));
  auto bad = [&](LoopOptions o) { return error_of<std::invalid_argument>([&] { TrainLoop loop({{{w}, 0.1}}, o); }); };
  auto o = sgd(1);
  o.grad_accum = 0;
  EXPECT_NE(bad(o).find("grad_accum must be >= 1"), std::string::npos);
  o = sgd(1), o.max_grad_norm = -1;
  EXPECT_NE(bad(o).find("max_grad_norm"), std::string::npos);
  o = sgd(1), o.min_lr_ratio = 2;
  EXPECT_NE(bad(o).find("min_lr_ratio"), std::string::npos);
  EXPECT_NE(error_of<std::invalid_argument>([&] { TrainLoop loop({}, sgd(1)); }).find("groups is empty"),
            std::string::npos);
  EXPECT_NE(error_of<std::invalid_argument>([&] {
              TrainLoop loop({{{w}, 0.0}}, sgd(1));
            }).find("groups[0].lr must be > 0"),
            std::string::npos);
  TrainLoop loop({{{w}, 0.1}}, sgd(1));
  auto detached = error_of<TrainError>([&] { loop.step([&](int64_t) { return w.detach().sum(); }); });
  EXPECT_NE(detached.find("does not depend on the trained parameters"), std::string::npos) << detached;
}
