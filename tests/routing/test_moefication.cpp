// MoEfication (Zhang et al. 2022): balanced k-means groups, a MoE-fied FFN with every expert
// active equals the dense FFN (Llama / GPT-2 / BERT), top-k < E routes and the router
// distillation loss falls while the routers train, clear errors. Sparse upcycling
// (Komatsuzaki et al. 2023) starts equal to the dense model.
#include <gtest/gtest.h>

#include "modula/backbone/registry.h"
#include "modula/composition/moe_upcycle.h"
#include "modula/composition/moefication.h"
#include "modula/modules/lora.h"
#include "modula/routing/top_k.h"
#include "support/temp_dir.h"

namespace {

using modula::MoefyOptions;
using modula::testing::fixture;

modula::BackboneInput batch() {
  modula::BackboneInput in;
  in.input_ids = torch::arange(5, 29, torch::kLong).view({2, 12});
  in.attention_mask = torch::ones({2, 12}, torch::kLong);
  return in;
}

TEST(Moefication, BalancedKmeansRecoversSeparatedGroups) {
  // Three well-separated groups of four points, shuffled: the partition must be recovered.
  torch::manual_seed(0);
  auto centres = torch::tensor({10.f, 0.f, 0.f, 0.f, 10.f, 0.f, 0.f, 0.f, 10.f}).view({3, 3});
  auto truth = torch::tensor({2, 0, 1, 1, 0, 2, 2, 1, 0, 0, 1, 2}, torch::kLong);
  auto points = centres.index_select(0, truth) + 0.1 * torch::randn({12, 3});
  for (uint64_t seed : {0u, 1u, 7u}) {
    auto group = modula::balanced_kmeans(points, 3, 10, seed);
    EXPECT_TRUE(torch::equal(torch::bincount(group, {}, 3), torch::full({3}, 4, torch::kLong)));
    // Same truth label <=> same group.
    auto same_truth = truth.unsqueeze(0) == truth.unsqueeze(1);
    auto same_group = group.unsqueeze(0) == group.unsqueeze(1);
    EXPECT_TRUE(torch::equal(same_truth, same_group)) << seed;
  }
  // Balanced even when the data is not: 6 points near one centre, 2 near another -> 4 + 4.
  auto lopsided = torch::cat({torch::zeros({6, 2}), torch::ones({2, 2}) * 5}) + 0.01 * torch::randn({8, 2});
  auto g = modula::balanced_kmeans(lopsided, 2, 10, 3);
  EXPECT_TRUE(torch::equal(torch::bincount(g, {}, 2), torch::full({2}, 4, torch::kLong)));
  EXPECT_TRUE(torch::equal(g, modula::balanced_kmeans(lopsided, 2, 10, 3)));  // seeded: reproducible
}

TEST(Moefication, AllExpertsActiveEqualsTheDenseModel) {
  for (std::string family : {"llama", "gpt2", "bert"}) {
    auto model = modula::load_backbone(fixture("hf/models/" + family));
    model->eval();
    auto dense = model->forward(batch());
    const int64_t E = 4;
    auto moes = modula::moefy(*model, MoefyOptions(E).k(E));
    ASSERT_EQ(static_cast<int64_t>(moes.size()), model->config().num_hidden_layers) << family;
    auto moefied = model->forward(batch());
    EXPECT_TRUE(torch::allclose(moefied.last_hidden_state, dense.last_hidden_state, 1e-5, 1e-5)) << family;
    EXPECT_LT((moefied.logits - dense.logits).abs().max().item<double>(), 1e-5) << family;
    // Each expert holds I / E neurons.
    EXPECT_EQ(moes[0].second->options.expert_size(), model->config().intermediate_size / E) << family;
  }
}

TEST(Moefication, TopKRoutesAndTheRouterLearnsTheLargestGroups) {
  torch::manual_seed(0);
  auto model = modula::load_backbone(fixture("hf/models/llama"));
  model->eval();
  auto dense = model->forward(batch()).logits.detach();
  const int64_t E = 8, k = 2;
  auto moes = modula::moefy(*model, MoefyOptions(E).k(k).layers({1}).seed(3));
  ASSERT_EQ(moes.size(), 1u);
  EXPECT_EQ(moes[0].first, "model.layers.1.mlp");
  auto& moe = moes[0].second;
  auto error = [&] { return (model->forward(batch()).logits - dense).pow(2).mean().item<double>(); };
  const double error_before = error();
  EXPECT_GT(error_before, 0);  // only k of E groups run
  EXPECT_EQ(moe->last_routing.indices.size(-1), k);

  // Train the router alone on its distillation loss (left in aux_loss).
  std::vector<torch::Tensor> router_params = moe->router->parameters();
  for (auto& p : model->parameters()) p.set_requires_grad(false);
  for (auto& p : router_params) p.set_requires_grad(true);
  torch::optim::Adam opt(router_params, torch::optim::AdamOptions(1e-2));
  model->train();
  double first = 0, last = 0;
  for (int step = 0; step < 40; ++step) {
    opt.zero_grad();
    model->forward(batch());
    auto loss = modula::collect_aux_loss(*model);
    loss.backward();
    opt.step();
    (step == 0 ? first : last) = loss.item<double>();
  }
  EXPECT_LT(last, 0.8 * first) << first << " -> " << last;
  model->eval();
  EXPECT_LT(error(), error_before) << "routing to the learned groups approximates the dense FFN better";
}

TEST(Moefication, IncrementalDecodingEqualsTheFullForward) {
  // Token-level routing depends on the token alone: decoding with a KV cache through the
  // routed experts (top-2 of 4) gives the full forward's logits; the padding mask reaches
  // the routers through the context (its last T columns while decoding).
  torch::manual_seed(0);
  for (std::string family : {"llama", "gpt2"}) {
    auto model = modula::load_backbone(fixture("hf/models/" + family));
    auto ctx = std::make_shared<modula::RoutingContext>();
    modula::moefy(*model, MoefyOptions(4).k(2).load_balance_coef(0.01).context(ctx));
    torch::NoGradGuard g;
    auto ids = torch::randint(0, model->config().vocab_size, {2, 9}, torch::kLong);
    auto mask = torch::ones({2, 9}, torch::kLong);
    modula::BackboneInput full;
    full.input_ids = ids;
    full.attention_mask = mask;
    ctx->set_mask(mask);
    auto want = model->forward(full).logits;
    modula::KVCache cache;
    std::vector<torch::Tensor> got;
    for (int64_t start = 0; start < 9;) {
      const int64_t len = start == 0 ? 5 : 1;
      modula::BackboneInput step;
      step.input_ids = ids.narrow(1, start, len);
      step.attention_mask = mask.narrow(1, 0, start + len);
      step.cache = &cache;
      ctx->set_mask(step.attention_mask);
      got.push_back(model->forward(step).logits);
      start += len;
    }
    EXPECT_LT((torch::cat(got, 1) - want).abs().max().item<double>(), 1e-5) << family;
  }
}

TEST(Upcycling, StartsEqualToTheDenseModelThenTrains) {
  torch::manual_seed(0);
  for (std::string family : {"llama", "gpt2"}) {
    auto model = modula::load_backbone(fixture("hf/models/" + family));
    model->eval();
    auto dense = model->forward(batch()).logits;
    auto moes = modula::upcycle(*model, modula::UpcycleOptions(4).k(2));
    ASSERT_EQ(static_cast<int64_t>(moes.size()), model->config().num_hidden_layers);
    // Identical experts, renormalised weights: the same function, though only 2 of 4 run.
    EXPECT_LT((model->forward(batch()).logits - dense).abs().max().item<double>(), 1e-5) << family;
    EXPECT_EQ(moes[0].second->last_routing.indices.size(-1), 2);
    // Once the experts differ, training reaches routers and experts, with the router losses.
    {
      torch::NoGradGuard g;
      for (auto& [path, moe] : moes) moe->w_down.add_(torch::randn_like(moe->w_down) * 0.05);
    }
    model->train();
    auto logits = model->forward(batch()).logits;
    auto aux = modula::collect_aux_loss(*model);
    EXPECT_GT(aux.item<double>(), 0);
    (logits.pow(2).mean() + aux).backward();
    for (auto& [path, moe] : moes) {
      auto router = std::dynamic_pointer_cast<modula::TopKRouterImpl>(moe->router);
      ASSERT_TRUE(router);
      EXPECT_GT(router->gate->weight.grad().abs().sum().item<double>(), 0) << path;
      EXPECT_GT(moe->w_up.grad().abs().sum().item<double>(), 0) << path;
    }
  }
  auto model = modula::load_backbone(fixture("hf/models/llama"));
  EXPECT_THROW(modula::upcycle(*model, modula::UpcycleOptions(4).k(5)), std::invalid_argument);
  EXPECT_THROW(modula::upcycle(*model, modula::UpcycleOptions(4).dropless(false).capacity_factor(-1)),
               std::invalid_argument);
}

TEST(Moefication, ClearErrors) {
  auto model = modula::load_backbone(fixture("hf/models/llama"));  // intermediate 176
  auto expect_error = [](auto f, const std::string& part) {
    try {
      f();
      ADD_FAILURE() << "expected an error mentioning '" << part << "'";
    } catch (const std::invalid_argument& e) {
      EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
    }
  };
  expect_error([&] { modula::moefy(*model, MoefyOptions(5)); }, "176 is not divisible by num_experts 5");
  expect_error([&] { modula::moefy(*model, MoefyOptions(4).k(5)); }, "k must be in [1, num_experts = 4], got 5");
  expect_error([&] { modula::dense_ffn(*model, "model.layers.0.self_attn"); }, "is not a feed-forward block site");
  expect_error([&] { modula::balanced_kmeans(torch::randn({7, 2}), 2, 5, 0); }, "cannot split 7 neurons into 2");
  // Projections carrying modules must be merged first; a site is MoE-fied once.
  auto modules = model->named_modules();
  auto up = std::dynamic_pointer_cast<modula::LinearImpl>(modules["model.layers.0.mlp.up_proj"]);
  up->attach("lora", modula::Lora(modula::LoraOptions(64, 176)).ptr());
  expect_error([&] { modula::moefy(*model, MoefyOptions(4).layers({0})); }, "carries attached modules");
  up->detach("lora");
  modula::moefy(*model, MoefyOptions(4).layers({0}));
  expect_error([&] { modula::moefy(*model, MoefyOptions(4).layers({0})); },
               "already carries block modules; replace the FFN");
}

}  // namespace
