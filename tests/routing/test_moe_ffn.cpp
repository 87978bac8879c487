// Mixture-of-experts layers: the MoE FFN block (Switch / Mixtral) — dropless dispatch equals
// the dense computation under the same routing, capacity overflow leaves exactly the
// residual, GShard priority, gradients to router and experts, the dense FFN skipped in the
// backbone — and MoLoRA experts at Linear sites.
#include <gtest/gtest.h>

#include "modula/backbone/registry.h"
#include "modula/composition/moe_ffn.h"
#include "modula/composition/moe_lora.h"
#include "modula/routing/top_k.h"
#include "support/temp_dir.h"

namespace {

using modula::MoeFfn;
using modula::MoeFfnOptions;
using modula::testing::fixture;

// Routes every call to the given weights / indices (scripted routing for hand-made cases).
class ScriptedRouter : public modula::RouterImpl {
 public:
  ScriptedRouter(int64_t experts, modula::Routing r) : experts_(experts), routing_(std::move(r)) {}
  modula::Routing route(const torch::Tensor&) override { return routing_; }
  int64_t num_modules() const override { return experts_; }

 private:
  int64_t experts_;
  modula::Routing routing_;
};

// Σ_e w[t, e] E_e(x_t) over every expert: the dense computation of a routing.
torch::Tensor dense_mixture(const modula::MoeFfnImpl& moe, const torch::Tensor& x, const torch::Tensor& weights) {
  auto flat = x.reshape({-1, x.size(-1)});
  auto w = weights.reshape({-1, moe.options.num_experts()});
  auto out = torch::zeros_like(flat);
  for (int64_t e = 0; e < moe.options.num_experts(); ++e) out += w.select(1, e).unsqueeze(1) * moe.expert(e, flat);
  return out.view(x.sizes());
}

TEST(MoeFfn, DroplessEqualsDenseComputationOfTheRouting) {
  torch::manual_seed(0);
  for (bool gated : {true, false}) {
    auto router = modula::TopKRouter(modula::TopKRouterOptions(16, 4).k(2));
    auto moe =
        MoeFfn(MoeFfnOptions(16, 8, 4).gated(gated).bias(true).activation(gated ? "silu" : "gelu"), router.ptr());
    {
      torch::NoGradGuard g;
      for (auto& p : moe->parameters()) p.add_(torch::randn_like(p) * 0.1);
    }
    auto x = torch::randn({2, 5, 16});
    auto y = moe->forward(x);
    EXPECT_TRUE(torch::allclose(y, dense_mixture(*moe, x, moe->last_routing.weights), 1e-5, 1e-6)) << gated;
    EXPECT_TRUE(moe->last_kept.all().item<bool>());
    // A capacity factor of E never drops (capacity = tokens · k): same output.
    moe->options.dropless(false).capacity_factor(4.0);
    EXPECT_TRUE(torch::allclose(moe->forward(x), y, 1e-6, 1e-6));
  }
}

TEST(MoeFfn, TokensOverCapacityGetExactlyTheResidual) {
  torch::manual_seed(1);
  // Six tokens all routed to expert 0 (k = 1); capacity = ceil(0.5 · 6 · 1 / 2) = 2.
  modula::Routing r;
  r.indices = torch::zeros({1, 6, 1}, torch::kLong);
  r.weights = torch::zeros({1, 6, 2}).index_fill(2, torch::tensor({0}, torch::kLong), 0.75);
  auto moe =
      MoeFfn(MoeFfnOptions(8, 4, 2).dropless(false).capacity_factor(0.5), std::make_shared<ScriptedRouter>(2, r));
  EXPECT_EQ(moe->options.capacity(6, 1), 2);
  auto x = torch::randn({1, 6, 8});
  auto y = moe->forward(x);
  // The first two tokens (token order) run; the rest contribute exactly zero.
  EXPECT_TRUE(torch::allclose(y[0].narrow(0, 0, 2), 0.75 * moe->expert(0, x[0].narrow(0, 0, 2)), 1e-6, 1e-6));
  EXPECT_TRUE(torch::equal(y[0].narrow(0, 2, 4), torch::zeros({4, 8})));
  EXPECT_TRUE(torch::equal(moe->last_kept.view({6}), torch::tensor({1, 1, 0, 0, 0, 0}).to(torch::kBool)));
  // Dropless: every token runs.
  moe->options.dropless(true);
  EXPECT_TRUE(torch::allclose(moe->forward(x)[0], 0.75 * moe->expert(0, x[0]), 1e-6, 1e-6));
}

TEST(MoeFfn, FirstChoicesTakePriorityOverSecondChoices) {
  torch::manual_seed(2);
  // k = 2 over 2 experts, capacity = ceil(0.5 · 3 · 2 / 2) = 2 per expert.
  // First choices: t0→0, t1→1, t2→0. Second: t0→1, t1→0, t2→1.
  // Expert 0 queue: t0, t2 (first), t1 (second: dropped). Expert 1: t1 (first), t0, t2 (dropped).
  modula::Routing r;
  r.indices = torch::tensor({0, 1, 1, 0, 0, 1}, torch::kLong).view({1, 3, 2});
  r.weights = torch::tensor({0.7f, 0.3f, 0.4f, 0.6f, 0.8f, 0.2f}).view({1, 3, 2});
  auto moe = MoeFfn(MoeFfnOptions(8, 4, 2).gated(false).activation("relu").dropless(false).capacity_factor(0.5),
                    std::make_shared<ScriptedRouter>(2, r));
  auto x = torch::randn({1, 3, 8});
  auto y = moe->forward(x)[0];
  EXPECT_TRUE(torch::equal(moe->last_kept, torch::tensor({1, 1, 1, 0, 1, 0}).to(torch::kBool).view({3, 2})));
  auto t = [&](int64_t i) { return x[0].narrow(0, i, 1); };
  auto expect = torch::cat({0.7 * moe->expert(0, t(0)) + 0.3 * moe->expert(1, t(0)),
                            0.6 * moe->expert(1, t(1)),  // t1's second choice (expert 0) was dropped
                            0.8 * moe->expert(0, t(2))});
  EXPECT_TRUE(torch::allclose(y, expect, 1e-6, 1e-6));
}

TEST(MoeFfn, UnweightedSelectionAndSoftRouting) {
  torch::manual_seed(3);
  modula::Routing r;  // soft routing: no indices, every expert runs with its weight
  r.weights = torch::tensor({0.5f, 0.25f, 0.25f}).view({1, 3}).expand({2, 3});
  auto moe = MoeFfn(MoeFfnOptions(8, 4, 3), std::make_shared<ScriptedRouter>(3, r));
  auto x = torch::randn({2, 4, 8});
  auto w = r.weights.unsqueeze(1).expand({2, 4, 3});
  EXPECT_TRUE(torch::allclose(moe->forward(x), dense_mixture(*moe, x, w), 1e-5, 1e-6));
  moe->options.weighted(false);  // Σ_e E_e(x)
  EXPECT_TRUE(torch::allclose(moe->forward(x), dense_mixture(*moe, x, torch::ones_like(w)), 1e-5, 1e-6));
}

TEST(MoeFfn, PerExampleHardRoutingSkipsRowsWithoutAnExpert) {
  torch::manual_seed(7);
  // Fixed routing style: row 0 -> expert 1, row 1 -> none (-1): row 1 gets exactly zero.
  modula::Routing r;
  r.indices = torch::tensor({1, -1}, torch::kLong).view({2, 1});
  r.weights = torch::tensor({0.f, 1.f, 0.f, 0.f}).view({2, 2});
  auto moe = MoeFfn(MoeFfnOptions(8, 4, 2), std::make_shared<ScriptedRouter>(2, r));
  auto x = torch::randn({2, 3, 8});
  auto y = moe->forward(x);
  EXPECT_TRUE(torch::allclose(y[0], moe->expert(1, x[0]), 1e-6, 1e-6));
  EXPECT_TRUE(torch::equal(y[1], torch::zeros({3, 8})));
}

TEST(MoeFfn, GradientsReachRouterAndExperts) {
  torch::manual_seed(4);
  auto router = modula::TopKRouter(modula::TopKRouterOptions(16, 4).k(2));
  auto moe = MoeFfn(MoeFfnOptions(16, 8, 4), router.ptr());
  moe->train();
  auto x = torch::randn({2, 12, 16});
  auto y = moe->forward(x);
  (y.pow(2).mean() + modula::collect_aux_loss(*moe)).backward();
  EXPECT_GT(router->gate->weight.grad().abs().sum().item<double>(), 0);
  auto used = torch::bincount(moe->last_routing.indices.reshape({-1}), {}, 4);
  for (int64_t e = 0; e < 4; ++e) {
    if (used[e].item<int64_t>() == 0) continue;
    EXPECT_GT(moe->w_up.grad()[e].abs().sum().item<double>(), 0) << e;
    EXPECT_GT(moe->w_gate.grad()[e].abs().sum().item<double>(), 0) << e;
    EXPECT_GT(moe->w_down.grad()[e].abs().sum().item<double>(), 0) << e;
  }
}

TEST(MoeFfn, ReplacesTheDenseFeedForwardInTheBackbone) {
  torch::manual_seed(5);
  auto model = modula::load_backbone(fixture("hf/models/llama"));
  auto ids = torch::arange(3, 19, torch::kLong).view({2, 8});
  auto modules = model->named_modules();
  auto site = std::dynamic_pointer_cast<modula::BlockSite>(modules["model.layers.0.mlp"]);
  ASSERT_TRUE(site);
  const auto& c = model->config();
  auto router = modula::TopKRouter(modula::TopKRouterOptions(c.hidden_size, 4).k(1));
  auto moe = MoeFfn(MoeFfnOptions(c.hidden_size, 32, 4), router.ptr());
  site->attach("moe", moe.ptr());
  EXPECT_FALSE(site->needs_base());
  model->train();
  auto logits = model->forward({.input_ids = ids}).logits;
  (logits.pow(2).mean() + modula::collect_aux_loss(*model)).backward();
  // The dense FFN of layer 0 was never computed: no gradient reaches it; layer 1's runs.
  auto params = model->named_parameters();
  EXPECT_FALSE(params["model.layers.0.mlp.up_proj.weight"].grad().defined());
  EXPECT_TRUE(params["model.layers.1.mlp.up_proj.weight"].grad().defined());
  EXPECT_GT(moe->w_down.grad().abs().sum().item<double>(), 0);
  EXPECT_GT(router->gate->weight.grad().abs().sum().item<double>(), 0);
  // Disabled, the site runs its dense FFN again.
  moe->enabled = false;
  EXPECT_TRUE(site->needs_base());
}

TEST(MoeFfn, ClearErrors) {
  auto router = modula::TopKRouter(modula::TopKRouterOptions(8, 4));
  auto expect_error = [](auto f, const std::string& part) {
    try {
      f();
      ADD_FAILURE() << "expected an error mentioning '" << part << "'";
    } catch (const std::invalid_argument& e) {
      EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
    }
  };
  expect_error([&] { MoeFfn(MoeFfnOptions(8, 4, 4).dropless(false).capacity_factor(0), router.ptr()); },
               "capacity_factor must be > 0");
  expect_error([&] { MoeFfn(MoeFfnOptions(8, 4, 3), router.ptr()); }, "routes over 4 modules, the layer has 3 experts");
  expect_error([&] { MoeFfn(MoeFfnOptions(8, 4, 4).activation("swiglu"), router.ptr()); }, "swiglu");
  expect_error([&] { MoeFfn(MoeFfnOptions(8, 0, 4), router.ptr()); }, "expert_size");
  modula::Routing r;
  r.weights = torch::ones({1, 2});
  expect_error(
      [&] { MoeFfn(MoeFfnOptions(8, 4, 2).router_distillation_coef(1), std::make_shared<ScriptedRouter>(2, r)); },
      "needs a TopKRouter");
  auto moe = MoeFfn(MoeFfnOptions(8, 4, 4), router.ptr());
  expect_error([&] { moe->forward(torch::randn({1, 2, 6})); }, "[1, 2, 6]");
}

TEST(MoeLora, RoutesTokensOverLoraExpertsInOneKernel) {
  torch::manual_seed(6);
  auto model = modula::load_backbone(fixture("hf/models/llama"));
  auto ids = torch::arange(3, 19, torch::kLong).view({2, 8});
  model->eval();
  auto base = model->forward({.input_ids = ids}).logits;
  auto layers = modula::add_moe_lora(*model, {{"target_modules", {"q_proj", "v_proj"}}},
                                     modula::MoeLoraOptions(4).r(2).alpha(4).k(2));
  ASSERT_EQ(layers.modules.size(), 4u);  // 2 layers × {q, v}
  EXPECT_EQ(layers.peft_type, "MODULA_MOE_LORA");
  // B = 0: identity at start.
  EXPECT_TRUE(torch::allclose(model->forward({.input_ids = ids}).logits, base, 1e-5, 1e-5));
  {
    torch::NoGradGuard g;
    for (auto& m : layers.modules) modula::moe_layer(m)->lora_bank()->lora_B.normal_(0, 0.5);
  }
  // One site by hand: y = W x + Σ_{m ∈ top-2} g_m s B_m A_m x.
  const auto& path = layers.modules.front().site;
  auto layer = modula::moe_layer(layers.modules.front());
  auto modules = model->named_modules();
  auto site = std::dynamic_pointer_cast<modula::LinearImpl>(modules[path]);
  auto x = torch::randn({2, 5, site->options.in_features()});
  auto y = site->forward(x);
  auto w = layer->last_routing.weights;
  ASSERT_EQ(w.sizes(), (std::vector<int64_t>{2, 5, 4}));
  EXPECT_TRUE(torch::equal((w > 0).sum(-1), torch::full({2, 5}, 2, torch::kLong)));
  auto expect = site->base_forward(x);
  const double s = 4.0 / 2;
  for (int64_t m = 0; m < 4; ++m) {
    auto delta = torch::matmul(torch::matmul(x, layer->lora_bank()->lora_A[m].t()), layer->lora_bank()->lora_B[m].t());
    expect = expect + w.select(2, m).unsqueeze(-1) * s * delta;
  }
  EXPECT_TRUE(torch::allclose(y, expect, 1e-4, 1e-5));
  // Training: the routers' losses are collected; gradients reach routers and experts.
  model->train();
  auto logits = model->forward({.input_ids = ids}).logits;
  auto aux = modula::collect_aux_loss(*model);
  EXPECT_GT(aux.item<double>(), 0);
  (logits.pow(2).mean() + aux).backward();
  for (auto& m : layers.modules) {
    const auto& p = m.site;
    auto l = modula::moe_layer(m);
    EXPECT_GT(l->lora_bank()->lora_A.grad().abs().sum().item<double>(), 0) << p;
    EXPECT_GT(l->lora_bank()->lora_B.grad().abs().sum().item<double>(), 0) << p;
    auto gate = std::dynamic_pointer_cast<modula::TopKRouterImpl>(l->router);
    ASSERT_TRUE(gate);
    EXPECT_GT(gate->gate->weight.grad().abs().sum().item<double>(), 0) << p;
  }
  EXPECT_THROW(modula::add_moe_lora(*model, {{"target_modules", {"k_proj"}}}, modula::MoeLoraOptions(2).k(3)),
               std::invalid_argument);
}

}  // namespace
