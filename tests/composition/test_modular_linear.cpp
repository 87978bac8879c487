// Algorithm 1 at a Linear site: fixed routing gathers the routed modules, soft routing with
// one-hot weights equals it, SMEAR equals the hand-averaged module, gradients reach only
// the routed modules.
#include <gtest/gtest.h>

#include "composition/stored_bank_paths.h"
#include "modula/composition/modular_linear.h"
#include "modula/routing/fixed.h"
#include "modula/routing/softmax.h"

using namespace modula;

namespace {

// Routes with given weights (no indices): the soft path of Algorithm 1.
class GivenRouter : public RouterImpl {
 public:
  explicit GivenRouter(torch::Tensor w) : weights(std::move(w)) {}
  Routing route(const torch::Tensor&) override { return {weights, torch::Tensor()}; }
  int64_t num_modules() const override { return weights.size(-1); }
  torch::Tensor weights;
};

LoraBank random_bank(int64_t in, int64_t out, int64_t M, int64_t r) {
  LoraBank bank(LoraBankOptions(in, out, M).r(r).alpha(2.0 * r));
  torch::NoGradGuard no_grad;
  bank->lora_B.normal_();
  bank->scaling.copy_(torch::linspace(0.5, 2.0, M));
  return bank;
}

// s_m B_m A_m x for one module m, x [T, in].
torch::Tensor one_module(const LoraBank& bank, int64_t m, const torch::Tensor& x) {
  return bank->scaling[m] * torch::matmul(torch::matmul(x, bank->lora_A[m].t()), bank->lora_B[m].t());
}

Linear base_layer(int64_t in, int64_t out) { return Linear(LinearOptions(in, out)); }

}  // namespace

TEST(ModularLinear, FixedRoutingEqualsEachRowAloneWithItsModule) {
  torch::manual_seed(0);
  auto ctx = std::make_shared<RoutingContext>();
  auto bank = random_bank(6, 5, 4, 3);
  auto layer = base_layer(6, 5);
  layer->attach("tasks", ModularLinear(bank, FixedRouter(FixedRouterOptions(4), ctx).ptr()).ptr());
  auto x = torch::randn({4, 7, 6});
  std::vector<int64_t> ids = {3, -1, 0, 3};
  ctx->set("task", torch::tensor(ids));
  auto y = layer->forward(x);
  for (int64_t n = 0; n < 4; ++n) {
    auto want = layer->base_forward(x[n]);
    if (ids[n] >= 0) want = want + one_module(bank, ids[n], x[n]);
    EXPECT_TRUE(torch::allclose(y[n], want, 1e-5, 1e-6)) << "row " << n;
  }
}

TEST(ModularLinear, SoftRoutingWithOneHotWeightsEqualsFixed) {
  torch::manual_seed(1);
  auto ctx = std::make_shared<RoutingContext>();
  auto bank = random_bank(6, 5, 3, 2);
  ctx->set("task", torch::tensor({2, 0, -1}));
  ModularLinear fixed(bank, FixedRouter(FixedRouterOptions(3), ctx).ptr());
  auto onehot = torch::tensor({{0., 0., 1.}, {1., 0., 0.}, {0., 0., 0.}});
  ModularLinear soft(bank, std::make_shared<GivenRouter>(onehot));
  ModularLinear smear(bank, std::make_shared<GivenRouter>(onehot),
                      ModularLinearOptions().aggregation(Aggregation::ParameterAverage));
  auto layer = base_layer(6, 5);
  auto x = torch::randn({3, 4, 6}), y = layer->base_forward(x);
  auto want = fixed->transform_output(x, y, *layer);
  EXPECT_TRUE(torch::allclose(soft->transform_output(x, y, *layer), want, 1e-5, 1e-6));
  EXPECT_TRUE(torch::allclose(smear->transform_output(x, y, *layer), want, 1e-5, 1e-6));
  // Per-token soft weights: the same one-hot at every position.
  ModularLinear token(bank, std::make_shared<GivenRouter>(onehot.unsqueeze(1).expand({3, 4, 3})));
  EXPECT_TRUE(torch::allclose(token->transform_output(x, y, *layer), want, 1e-5, 1e-6));
}

TEST(ModularLinear, SoftRoutingIsWeightedSumOfModuleOutputs) {
  torch::manual_seed(2);
  auto bank = random_bank(6, 5, 3, 2);
  auto w = torch::softmax(torch::randn({2, 4, 3}), -1);  // per token
  ModularLinear soft(bank, std::make_shared<GivenRouter>(w));
  auto layer = base_layer(6, 5);
  auto x = torch::randn({2, 4, 6}), y = torch::zeros({2, 4, 5});
  auto got = soft->transform_output(x, y, *layer);
  for (int64_t n = 0; n < 2; ++n) {
    auto want = torch::zeros({4, 5});
    for (int64_t m = 0; m < 3; ++m) want += w[n].select(1, m).unsqueeze(1) * one_module(bank, m, x[n]);
    EXPECT_TRUE(torch::allclose(got[n], want, 1e-5, 1e-6));
  }
}

TEST(ModularLinear, SmearEqualsTheHandAveragedModule) {
  torch::manual_seed(3);
  auto bank = random_bank(6, 5, 3, 2);
  auto w = torch::softmax(torch::randn({2, 3}), -1);
  ModularLinear smear(bank, std::make_shared<GivenRouter>(w),
                      ModularLinearOptions().aggregation(Aggregation::ParameterAverage));
  auto layer = base_layer(6, 5);
  auto x = torch::randn({2, 4, 6});
  auto got = smear->transform_output(x, torch::zeros({2, 4, 5}), *layer);
  for (int64_t n = 0; n < 2; ++n) {
    auto A = torch::zeros({2, 6}), B = torch::zeros({5, 2});
    for (int64_t m = 0; m < 3; ++m) {
      A += w[n][m] * bank->lora_A[m];
      B += w[n][m] * bank->scaling[m] * bank->lora_B[m];
    }
    EXPECT_TRUE(torch::allclose(got[n], torch::matmul(torch::matmul(x[n], A.t()), B.t()), 1e-5, 1e-6));
  }
  // SMEAR is not the weighted sum of outputs (B A is bilinear in the parameters).
  ModularLinear sum(bank, std::make_shared<GivenRouter>(w));
  EXPECT_FALSE(torch::allclose(sum->transform_output(x, torch::zeros({2, 4, 5}), *layer), got, 1e-3, 1e-4));
  // Per-token weights cannot average parameters per example.
  ModularLinear bad(bank, std::make_shared<GivenRouter>(torch::ones({2, 4, 3}) / 3),
                    ModularLinearOptions().aggregation(Aggregation::ParameterAverage));
  EXPECT_THROW(bad->transform_output(x, torch::zeros({2, 4, 5}), *layer), std::invalid_argument);
}

TEST(ModularLinear, GradientsReachOnlyRoutedModules) {
  torch::manual_seed(4);
  auto ctx = std::make_shared<RoutingContext>();
  auto bank = random_bank(6, 5, 4, 2);
  auto layer = base_layer(6, 5);
  layer->attach("tasks", ModularLinear(bank, FixedRouter(FixedRouterOptions(4), ctx).ptr()).ptr());
  ctx->set("task", torch::tensor({2, 0, 2, -1}));  // a multi-task batch
  layer->forward(torch::randn({4, 3, 6})).pow(2).sum().backward();
  auto gA = bank->lora_A.grad(), gB = bank->lora_B.grad();
  ASSERT_TRUE(gA.defined() && gB.defined());
  for (int64_t m : {0, 2}) {
    EXPECT_GT(gA[m].abs().sum().item<double>(), 0) << m;
    EXPECT_GT(gB[m].abs().sum().item<double>(), 0) << m;
  }
  for (int64_t m : {1, 3}) {
    EXPECT_EQ(gA[m].abs().sum().item<double>(), 0) << m;
    EXPECT_EQ(gB[m].abs().sum().item<double>(), 0) << m;
  }
}

TEST(ModularLinear, SoftmaxRouterLearnsAndSharesAcrossSites) {
  torch::manual_seed(5);
  auto ctx = std::make_shared<RoutingContext>();
  auto router = SoftmaxRouter(SoftmaxRouterOptions(6, 3), ctx);
  auto owner = std::make_shared<torch::nn::Module>();
  owner->register_module("router", router);  // one router shared by two sites
  auto shared = ModularLinearOptions().owns_router(false);
  auto l1 = base_layer(6, 6), l2 = base_layer(6, 5);
  l1->attach("soft", ModularLinear(random_bank(6, 6, 3, 2), router.ptr(), shared).ptr());
  l2->attach("soft", ModularLinear(random_bank(6, 5, 3, 2), router.ptr(), shared).ptr());
  EXPECT_EQ(l1->named_parameters().find("adapters.soft.router.weight"), nullptr);
  l2->forward(l1->forward(torch::randn({2, 4, 6}))).sum().backward();
  EXPECT_GT(router->weight.grad().abs().sum().item<double>(), 0);
  EXPECT_EQ(owner->parameters().size(), 2u);
}

TEST(ModularLinear, ErrorsAreClear) {
  auto ctx = std::make_shared<RoutingContext>();
  EXPECT_THROW(ModularLinear(random_bank(6, 5, 3, 2), FixedRouter(FixedRouterOptions(4), ctx).ptr()),
               std::invalid_argument);
  EXPECT_THROW(LoraBankOptions(6, 5, 0).validate(), std::invalid_argument);
  ModularLinear m(random_bank(6, 5, 3, 2), FixedRouter(FixedRouterOptions(3), ctx).ptr());
  auto layer = base_layer(6, 5);
  EXPECT_FALSE(m->mergeable());
  EXPECT_THROW(m->merge(*layer), std::logic_error);
}

// One module per row (k = 1) in every path of LoraBankImpl::selected: the decode kernel
// (T = 1, no autograd), the packed GEMMs per row (T > 1: 4, 7, 9, 11 tokens, every remainder
// of the 6-row tiles; 130, three blocks of tokens spread over the threads; out 45, two whole
// 16-row panels and an edge panel; r 19, one of each), the gathered bmm (autograd) against
// each row alone with its module: rows in arbitrary module order, a repeated module, a row
// with id -1; in, out and r not multiples of the kernels' 8- and 16-wide steps. T = 0: empty.
TEST(LoraBank, OneModulePerRowEqualsEachRowAlone) {
  torch::manual_seed(7);
  const int64_t in = 37, out = 45, M = 5, r = 19;
  auto bank = random_bank(in, out, M, r);
  const std::vector<int64_t> ids = {3, -1, 0, 3, 4, 1, 2};
  const auto N = static_cast<int64_t>(ids.size());
  auto idx = torch::tensor(ids).unsqueeze(1);  // [N, 1]
  auto w = torch::rand({N, 1}) + 0.5;
  for (int64_t T : {0, 1, 4, 7, 9, 11, 130})
    for (bool grad : {false, true}) {
      auto x = torch::randn({N, T, in});
      torch::Tensor y;
      {
        torch::AutoGradMode mode(grad);
        y = bank->selected({x, {}, nullptr}, idx, w);
      }
      EXPECT_EQ(y.sizes(), (std::vector<int64_t>{N, T, out}));
      for (int64_t n = 0; n < N; ++n) {
        auto want = ids[n] < 0 ? torch::zeros({T, out}) : w[n][0] * one_module(bank, ids[n], x[n]);
        EXPECT_TRUE(torch::allclose(y[n], want, 1e-5, 1e-5)) << "T " << T << " grad " << grad << " row " << n;
      }
    }
  torch::NoGradGuard no_grad;
  EXPECT_THROW(bank->selected({torch::randn({1, 1, in}), {}, nullptr}, torch::tensor({{M}}), torch::ones({1, 1})),
               std::invalid_argument);
}

// A view bank over attached LoRAs: without autograd it reuses its stacked copy until a
// member changes, and then sees the change: an in-place update of lora_B (the optimizer's
// way), a new scale, a replaced tensor. With autograd the gradient reaches the member.
TEST(LoraBank, ViewBankFollowsItsMembers) {
  torch::manual_seed(3);
  const int64_t in = 6, out = 5, r = 3;
  std::vector<std::shared_ptr<LoraImpl>> members;
  for (int m = 0; m < 2; ++m) {
    members.push_back(std::make_shared<LoraImpl>(LoraOptions(in, out).r(r).alpha(2.0 * r)));
    torch::NoGradGuard no_grad;
    members.back()->lora_B.normal_();
  }
  auto bank = LoraBankImpl::view(members);
  auto x = torch::randn({2, 1, in});
  auto idx = torch::tensor({{1}, {0}});
  auto w = torch::ones({2, 1});
  auto alone = [&](int m, const torch::Tensor& xn) {
    const auto& l = *members[m];
    return l.scale * l.options.scaling() * torch::matmul(torch::matmul(xn, l.lora_A.t()), l.lora_B.t());
  };
  auto check = [&](const char* what) {
    torch::NoGradGuard no_grad;
    auto y = bank->selected({x, {}, nullptr}, idx, w);
    EXPECT_TRUE(torch::allclose(y[0], alone(1, x[0]), 1e-5, 1e-6)) << what;
    EXPECT_TRUE(torch::allclose(y[1], alone(0, x[1]), 1e-5, 1e-6)) << what;
  };
  check("first call");
  check("cached copy");
  {
    torch::NoGradGuard no_grad;
    members[1]->lora_B.mul_(-2);
  }
  check("after an in-place update of lora_B");
  members[0]->scale = 0.25;
  check("after a new scale");
  members[1]->lora_A = torch::randn({r, in}).requires_grad_();
  check("after a replaced lora_A");
  auto y = bank->selected({x, {}, nullptr}, idx, w);
  y.sum().backward();
  ASSERT_TRUE(members[1]->lora_A.grad().defined());
  EXPECT_GT(members[1]->lora_A.grad().abs().sum().item<double>(), 0);
}

// A bank stored in bfloat16 (store_as) computes in the input's dtype: every path equals a
// float32 bank holding the same rounded weights — the decode kernel widening as it reads
// (T = 1), the packed GEMMs per row widening as they pack (T = 4, 7, 130), the gathered bmm
// with autograd, two modules per row,
// soft mixing, SMEAR averaging — and differs from the unrounded bank by the rounding only.
TEST(LoraBank, StoredInBfloat16ComputesInTheInputDtype) {
  torch::manual_seed(8);
  const int64_t in = 37, out = 29, M = 4, r = 19;
  auto exact = random_bank(in, out, M, r), rounded = random_bank(in, out, M, r), bf16 = random_bank(in, out, M, r);
  {
    torch::NoGradGuard no_grad;
    for (auto* b : {&rounded, &bf16}) {
      (*b)->lora_A.copy_(exact->lora_A.to(torch::kBFloat16));
      (*b)->lora_B.copy_(exact->lora_B.to(torch::kBFloat16));
      (*b)->scaling.copy_(exact->scaling);
    }
  }
  bf16->store_as(torch::kBFloat16);
  EXPECT_EQ(bf16->lora_A.scalar_type(), torch::kBFloat16);
  EXPECT_EQ(bf16->lora_B.scalar_type(), torch::kBFloat16);
  EXPECT_EQ(bf16->scaling.scalar_type(), torch::kFloat32);
  EXPECT_EQ(bf16->named_parameters().size(), 2u);  // still the bank's two parameters
  modula::testing::expect_stored_bank_paths(*bf16, *rounded, *exact);
  EXPECT_THROW(bf16->store_as(torch::kInt32), std::invalid_argument);
}

// A view bank stored in bfloat16 re-stacks its members in that dtype; the members keep theirs.
TEST(LoraBank, ViewBankStoredInBfloat16) {
  torch::manual_seed(9);
  std::vector<std::shared_ptr<LoraImpl>> members;
  for (int m = 0; m < 2; ++m) {
    members.push_back(std::make_shared<LoraImpl>(LoraOptions(6, 5).r(3).alpha(6)));
    torch::NoGradGuard no_grad;
    members.back()->lora_B.normal_();
  }
  auto bank = LoraBankImpl::view(members);
  bank->store_as(torch::kBFloat16);
  torch::NoGradGuard no_grad;
  auto x = torch::randn({2, 1, 6});
  auto y = bank->selected({x, {}, nullptr}, torch::tensor({{1}, {0}}), torch::ones({2, 1}));
  EXPECT_EQ(bank->lora_A.scalar_type(), torch::kBFloat16);
  EXPECT_EQ(members[0]->lora_A.scalar_type(), torch::kFloat32);
  const auto& l = *members[1];
  auto want =
      l.options.scaling() * torch::matmul(torch::matmul(x[0], l.lora_A.to(torch::kBFloat16).to(torch::kFloat).t()),
                                          l.lora_B.to(torch::kBFloat16).to(torch::kFloat).t());
  EXPECT_TRUE(torch::allclose(y[0], want, 1e-5, 1e-6));
}

// Banks of at least kHugePageMinBytes per tensor (what a decode step streams from DRAM) live
// in huge-page memory (util/huge_pages.h): stacked, view copies without autograd, and after
// store_as; with autograd the view's copy stays in the graph. Values are unchanged.
TEST(LoraBank, LargeBanksLiveOnHugePages) {
  torch::manual_seed(10);
  const int64_t in = 1024, out = 1024, r = 64;
  std::vector<std::shared_ptr<LoraImpl>> members;
  for (int m = 0; m < 4; ++m) {  // 4 x 64 x 1024 floats = 1 MiB per bank tensor
    members.push_back(std::make_shared<LoraImpl>(LoraOptions(in, out).r(r).alpha(r)));
    torch::NoGradGuard no_grad;
    members.back()->lora_B.normal_();
  }
  auto aligned = [](const torch::Tensor& t) { return reinterpret_cast<uintptr_t>(t.data_ptr()) % (2u << 20) == 0; };
  auto stacked = LoraBankImpl::stack(members);
  EXPECT_TRUE(aligned(stacked->lora_A) && aligned(stacked->lora_B));
  EXPECT_TRUE(stacked->lora_A.requires_grad());  // still a trainable parameter
  EXPECT_TRUE(torch::equal(stacked->lora_A[2], members[2]->lora_A));
  auto view = LoraBankImpl::view(members);
  auto x = torch::randn({4, 1, in});
  auto idx = torch::tensor({{3}, {0}, {1}, {2}});
  auto w = torch::ones({4, 1});
  {
    torch::NoGradGuard no_grad;
    auto y = view->selected({x, {}, nullptr}, idx, w);
    EXPECT_TRUE(aligned(view->lora_A) && aligned(view->lora_B));
    EXPECT_TRUE(torch::allclose(y, stacked->selected({x, {}, nullptr}, idx, w), 1e-5, 1e-5));
  }
  auto y = view->selected({x, {}, nullptr}, idx, w);  // with autograd: re-stacked in the graph
  EXPECT_TRUE(view->lora_A.requires_grad());
  y.sum().backward();
  EXPECT_TRUE(members[3]->lora_A.grad().defined());
  stacked->store_as(torch::kBFloat16);
  EXPECT_FALSE(aligned(stacked->lora_A));  // 512 KiB in bf16: below the threshold, plain memory
  EXPECT_TRUE(torch::equal(stacked->lora_A[2], members[2]->lora_A.to(torch::kBFloat16)));
}
