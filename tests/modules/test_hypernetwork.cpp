// LoRA hypernetworks (HyperFormer, Mahabadi et al. 2021; Üstün et al. 2022): identity at
// init, parameter count, gradients, per-example tasks, save/load, multi-task training,
// modules for unseen task embeddings, errors.
#include <gtest/gtest.h>

#include <functional>
#include <set>

#include "modula/backbone/registry.h"
#include "modula/composition/registry.h"
#include "modula/io/peft.h"
#include "modula/modules/adapter.h"
#include "modula/modules/hypernetwork.h"
#include "modula/modules/targets.h"
#include "support/temp_dir.h"

using modula::testing::fixture;
using modula::testing::TempDir;
using json = nlohmann::json;

namespace {

std::shared_ptr<modula::Backbone> llama() { return modula::load_backbone(fixture("hf/models/llama")); }

// Three shape groups on the llama fixture: q_proj 64->64, v_proj 64->32, down_proj 176->64.
modula::HyperLoraOptions options() {
  return modula::HyperLoraOptions(3)
      .task_embedding_dim(8)
      .layer_embedding_dim(6)
      .hidden(16)
      .r(4)
      .alpha(8)
      .target_modules({"q_proj", "v_proj", "down_proj"});
}

modula::BackboneInput batch(int64_t rows = 3) {
  modula::BackboneInput in;
  in.input_ids = torch::arange(10, 10 + rows * 12, torch::kInt64).view({rows, 12});
  return in;
}

torch::Tensor ids(std::vector<int64_t> v) { return torch::tensor(v, torch::kInt64); }

// Non-zero B-heads, so generated modules change the output.
void perturb(modula::HyperLoraImpl& hyper, double std = 0.05) {
  torch::NoGradGuard g;
  torch::manual_seed(7);
  for (auto& p : hyper.parameters()) p.add_(torch::randn_like(p) * std);
}

torch::Tensor lm_loss(const torch::Tensor& logits, const torch::Tensor& targets) {
  return torch::nn::functional::cross_entropy(logits.reshape({-1, logits.size(-1)}), targets.reshape({-1}));
}

TEST(HyperLora, StartsAsIdentity) {
  auto model = llama();
  torch::NoGradGuard g;
  auto base = model->forward(batch()).logits;
  auto hyper = modula::HyperLora(*model, options());
  hyper->attach(*model, "hyper");
  hyper->set_task_ids(ids({0, 1, 2}));
  EXPECT_TRUE(torch::allclose(model->forward(batch()).logits, base, 1e-6, 1e-6));
  hyper->set_task_embedding(torch::randn({3, 8}));
  EXPECT_TRUE(torch::allclose(model->forward(batch()).logits, base, 1e-6, 1e-6));
}

TEST(HyperLora, TrainableCountEqualsFormula) {
  auto model = llama();
  int64_t backbone = 0;
  for (auto& p : model->parameters()) backbone += p.numel();
  auto o = options();
  auto hyper = modula::HyperLora(*model, o);
  hyper->attach(*model, "hyper");
  // T·d_t + S·d_l + (d_t + d_l + 1)·h + Σ_groups (h + 1)·r·(in + out)
  int64_t T = o.num_tasks(), dt = o.task_embedding_dim(), dl = o.layer_embedding_dim(), h = o.hidden(), r = o.r();
  int64_t sites = 0, heads = 0;
  std::set<std::pair<int64_t, int64_t>> groups;
  for (auto& [path, layer] : modula::linear_sites(*model)) {
    if (!modula::matches_target(o.target_modules(), path)) continue;
    ++sites;
    auto shape = std::make_pair(layer->options.in_features(), layer->options.out_features());
    if (groups.insert(shape).second) heads += (h + 1) * r * (shape.first + shape.second);
  }
  EXPECT_EQ(sites, 6);
  EXPECT_EQ(groups.size(), 3u);
  int64_t count = 0;
  for (auto& p : hyper->parameters()) count += p.numel();
  EXPECT_EQ(count, T * dt + sites * dl + (dt + dl + 1) * h + heads);
  int64_t after = 0;
  for (auto& p : model->parameters()) after += p.numel();
  EXPECT_EQ(after, backbone) << "generated site modules own no weights";
}

TEST(HyperLora, GradientsReachOnlyHypernetwork) {
  auto model = llama();
  auto hyper = modula::HyperLora(*model, options());
  hyper->attach(*model, "hyper");
  modula::freeze_backbone(*model);
  perturb(*hyper);
  hyper->set_task_ids(ids({0, 1, 2}));
  auto in = batch();
  lm_loss(model->forward(in).logits, in.input_ids).backward();
  for (auto& p : model->named_parameters()) EXPECT_FALSE(p.value().grad().defined()) << p.key();
  for (auto& p : hyper->named_parameters()) {
    ASSERT_TRUE(p.value().grad().defined()) << p.key();
    EXPECT_GT(p.value().grad().abs().sum().item<double>(), 0) << p.key();
  }
}

TEST(HyperLora, PerExampleTasksEqualRowsAlone) {
  auto model = llama();
  auto hyper = modula::HyperLora(*model, options());
  hyper->attach(*model, "hyper");
  perturb(*hyper);
  torch::NoGradGuard g;
  auto in = batch(4);
  auto tasks = std::vector<int64_t>{2, 0, 1, 2};
  hyper->set_task_ids(ids(tasks));
  auto mixed = model->forward(in).logits;
  for (int64_t i = 0; i < 4; ++i) {
    modula::BackboneInput row;
    row.input_ids = in.input_ids.narrow(0, i, 1);
    hyper->set_task_ids(ids({tasks[i]}));
    auto alone = model->forward(row).logits;
    EXPECT_LT((mixed.narrow(0, i, 1) - alone).abs().max().item<double>(), 1e-5) << "row " << i;
  }
  // One task id for the whole batch broadcasts.
  hyper->set_task_ids(ids({1}));
  auto all_one = model->forward(in).logits;
  hyper->set_task_ids(ids({1, 1, 1, 1}));
  EXPECT_LT((model->forward(in).logits - all_one).abs().max().item<double>(), 1e-5);
  EXPECT_FALSE(torch::allclose(all_one, mixed, 1e-4, 1e-4));
}

TEST(HyperLora, NoGradCacheFollowsParameterUpdates) {
  auto model = llama();
  auto hyper = modula::HyperLora(*model, options());
  hyper->attach(*model, "hyper");
  perturb(*hyper);
  hyper->set_task_ids(ids({0, 1, 2}));
  torch::Tensor before, again;
  {
    torch::NoGradGuard g;
    before = model->forward(batch()).logits;
    again = model->forward(batch()).logits;  // served from the cache
    EXPECT_TRUE(torch::equal(before, again));
    hyper->heads[0].second->weight.add_(0.1);  // in place: the cache must notice
  }
  torch::NoGradGuard g;
  auto after = model->forward(batch()).logits;
  EXPECT_FALSE(torch::allclose(after, before, 1e-4, 1e-4));
  torch::GradMode::set_enabled(true);
  auto with_grad = model->forward(batch()).logits.detach();
  torch::GradMode::set_enabled(false);
  // Float rounding only: without autograd q/k/v and gate/up run as one GEMM (fused_linear.h).
  EXPECT_LT((with_grad - after).abs().max().item<double>(), 1e-5);
}

TEST(HyperLora, SaveLoadRoundTrip) {
  auto model = llama();
  auto hyper = modula::HyperLora(*model, options().seed(3));
  hyper->attach(*model, "hyper");
  perturb(*hyper);
  TempDir dir;
  modula::save_hyper_lora(*hyper, dir.path);
  auto folder = modula::io::read_peft_folder(dir.path);
  EXPECT_EQ(folder.peft_type, "MODULA_HYPER_LORA");
  EXPECT_EQ(folder.config["sites"].size(), 6u);
  torch::NoGradGuard g;
  hyper->set_task_ids(ids({2, 0, 1}));
  auto want = model->forward(batch()).logits;
  auto fresh = llama();
  auto loaded = modula::load_hyper_lora(*fresh, dir.path, "h");
  loaded->set_task_ids(ids({2, 0, 1}));
  EXPECT_TRUE(torch::equal(fresh->forward(batch()).logits, want));
  loaded->detach();
  EXPECT_TRUE(torch::allclose(fresh->forward(batch()).logits, llama()->forward(batch()).logits, 1e-6, 1e-6));
}

TEST(HyperLora, MultiTaskTrainingLowersJointLoss) {
  auto model = llama();
  auto hyper = modula::HyperLora(*model, options().num_tasks(2));
  hyper->attach(*model, "hyper");
  modula::freeze_backbone(*model);
  torch::manual_seed(1);
  // Two toy tasks: their own fixed inputs and targets, one example each in the batch.
  modula::BackboneInput in;
  in.input_ids = torch::randint(3, 512, {2, 10}, torch::kInt64);
  auto targets = torch::randint(3, 512, {2, 10}, torch::kInt64);
  hyper->set_task_ids(ids({0, 1}));
  torch::optim::AdamW opt(hyper->parameters(), torch::optim::AdamWOptions(1e-2).weight_decay(0));
  double first = 0, last = 0;
  for (int step = 0; step < 20; ++step) {
    opt.zero_grad();
    auto loss = lm_loss(model->forward(in).logits, targets);
    loss.backward();
    opt.step();
    (step == 0 ? first : last) = loss.item<double>();
  }
  EXPECT_LT(last, first * 0.9) << "first " << first << " last " << last;
  // The two tasks got different modules.
  torch::NoGradGuard g;
  auto m0 = hyper->modules_for_embedding(hyper->task_embeddings[0]);
  auto m1 = hyper->modules_for_embedding(hyper->task_embeddings[1]);
  EXPECT_FALSE(torch::allclose(m0[0].lora_B, m1[0].lora_B, 1e-4, 1e-4));
}

TEST(HyperLora, UnseenTaskEmbeddingGivesModules) {
  auto model = llama();
  auto hyper = modula::HyperLora(*model, options());
  hyper->attach(*model, "hyper");
  perturb(*hyper);
  torch::NoGradGuard g;
  torch::manual_seed(11);
  auto unseen = torch::randn({8});
  auto modules = hyper->modules_for_embedding(unseen);
  ASSERT_EQ(modules.size(), hyper->sites().size());
  for (const auto& m : modules) {
    auto delta = torch::matmul(m.lora_B, m.lora_A);  // [out, in]
    EXPECT_EQ(m.lora_A.size(0), 4) << m.site;
    EXPECT_TRUE(torch::isfinite(delta).all().item<bool>()) << m.site;
    EXPECT_GT(delta.abs().max().item<double>(), 1e-4) << m.site;
  }
  // In the model: finite logits, different from the base.
  auto base = llama()->forward(batch(1)).logits;
  hyper->set_task_embedding(unseen);
  auto out = model->forward(batch(1)).logits;
  EXPECT_TRUE(torch::isfinite(out).all().item<bool>());
  EXPECT_FALSE(torch::allclose(out, base, 1e-4, 1e-4));
}

TEST(HyperLora, InterpolatedTaskEmbeddings) {
  auto model = llama();
  auto hyper = modula::HyperLora(*model, options());
  hyper->attach(*model, "hyper");
  perturb(*hyper);
  torch::NoGradGuard g;
  auto e0 = hyper->task_embeddings[0].clone(), e1 = hyper->task_embeddings[1].clone();
  auto in = batch(3);
  // Endpoints of the path equal the learned tasks; the midpoint lies between neither.
  hyper->set_task_ids(ids({0, 1, 1}));
  auto by_id = model->forward(in).logits;
  hyper->set_task_embedding(torch::stack({e0, e1, 0.5 * (e0 + e1)}));
  auto by_embedding = model->forward(in).logits;
  EXPECT_LT((by_embedding.narrow(0, 0, 2) - by_id.narrow(0, 0, 2)).abs().max().item<double>(), 1e-5);
  auto mid = by_embedding[2];
  EXPECT_TRUE(torch::isfinite(mid).all().item<bool>());
  EXPECT_FALSE(torch::allclose(mid, by_id[2], 1e-4, 1e-4));
  auto a = hyper->modules_for_embedding(e0)[0], b = hyper->modules_for_embedding(e1)[0];
  auto m = hyper->modules_for_embedding(0.5 * (e0 + e1))[0];
  auto d = [](const modula::GeneratedLoraWeights& w) { return torch::matmul(w.lora_B, w.lora_A); };
  EXPECT_TRUE(torch::isfinite(d(m)).all().item<bool>());
  EXPECT_GT((d(m) - d(a)).abs().max().item<double>(), 1e-5);
  EXPECT_GT((d(m) - d(b)).abs().max().item<double>(), 1e-5);
}

TEST(HyperLora, ExportedLoraEqualsGeneratedModules) {
  auto model = llama();
  auto hyper = modula::HyperLora(*model, options());
  hyper->attach(*model, "hyper");
  perturb(*hyper);
  TempDir dir;
  modula::export_lora(*hyper, hyper->task_embeddings[1].detach(), dir.path);
  torch::NoGradGuard g;
  hyper->set_task_ids(ids({1}));
  auto want = model->forward(batch(2)).logits;
  auto fresh = llama();
  auto lora = modula::load_adapter(*fresh, dir.path);
  EXPECT_LT((fresh->forward(batch(2)).logits - want).abs().max().item<double>(), 1e-5);
}

template <typename E>
void expect_throw_naming(const std::function<void()>& f, const std::string& text) {
  try {
    f();
    ADD_FAILURE() << "no exception; expected one naming '" << text << "'";
  } catch (const E& e) {
    EXPECT_NE(std::string(e.what()).find(text), std::string::npos) << e.what();
  }
}

TEST(HyperLora, ClearErrors) {
  auto model = llama();
  auto hyper = modula::HyperLora(*model, options());
  hyper->attach(*model, "hyper");
  using IA = std::invalid_argument;
  expect_throw_naming<std::runtime_error>([&] { model->forward(batch()); }, "no task set");
  expect_throw_naming<IA>([&] { hyper->set_task_ids(ids({0, 3})); }, "task id 3");
  expect_throw_naming<IA>([&] { hyper->set_task_ids(ids({-1, 0})); }, "task id -1");
  expect_throw_naming<IA>([&] { hyper->set_task_embedding(torch::zeros({2, 5})); }, "[2, 5]");
  hyper->set_task_ids(ids({0, 1}));
  expect_throw_naming<IA>([&] { model->forward(batch(3)); }, "2 tasks set for a batch of 3");
  expect_throw_naming<IA>([&] { (void)modula::HyperLora(*model, options().r(0)); }, "r must be positive");
  expect_throw_naming<IA>([&] { (void)modula::HyperLora(*model, options().target_modules({"query"})); },
                          "match no linear site");
  EXPECT_THROW(hyper->attach(*model, "hyper"), std::invalid_argument);  // name taken

  TempDir dir;
  modula::save_hyper_lora(*hyper, dir.path);
  auto folder = modula::io::read_peft_folder(dir.path);
  auto rewrite = [&](const std::string& sub, json config, std::map<std::string, torch::Tensor> tensors) {
    modula::io::NamedTensors list(tensors.begin(), tensors.end());
    modula::io::write_peft_folder(dir / sub, config, list);
    return dir / sub;
  };
  auto missing = folder.tensors;
  missing.erase("hidden.weight");
  auto misshaped = folder.tensors;
  misshaped["site_embeddings"] = torch::zeros({5, 6});
  auto bad_r = folder.config;
  bad_r["r"] = 0;
  auto bad_type = folder.config;
  bad_type["hidden"] = "wide";
  auto fresh = llama();
  expect_throw_naming<IA>([&] { modula::load_hyper_lora(*fresh, rewrite("missing", folder.config, missing)); },
                          "no tensor 'hidden.weight'");
  expect_throw_naming<IA>([&] { modula::load_hyper_lora(*fresh, rewrite("shape", folder.config, misshaped)); },
                          "'site_embeddings' has shape [5, 6], expected [6, 6]");
  expect_throw_naming<IA>([&] { modula::load_hyper_lora(*fresh, rewrite("r", bad_r, folder.tensors)); },
                          "r must be positive");
  expect_throw_naming<IA>([&] { modula::load_hyper_lora(*fresh, rewrite("type", bad_type, folder.tensors)); },
                          "key 'hidden' has the wrong type");
  EXPECT_THROW(modula::load_hyper_lora(*fresh, dir / "absent"), std::runtime_error);
  // Nothing half-attached after the failures.
  for (auto& [path, layer] : modula::linear_sites(*fresh)) EXPECT_FALSE(layer->has_modules()) << path;
}

}  // namespace

// The hypernetwork at a site is a module bank over the rows of its task-embedding table
// (Algorithm 1): hard routing generates only the selected rows, soft routing mixes every
// row's module, parameter averaging averages the generated A and B.
TEST(HyperLora, BankRoutesOverTaskRows) {
  auto model = llama();
  modula::HyperLora hyper(*model, options());
  perturb(*hyper);
  const size_t site = 0;  // q_proj of layer 0: 64 -> 64
  const double s = 0.5 * hyper->options.scaling();
  modula::HyperLoraBank bank(*hyper, site, hyper->task_embeddings, 0.5 * hyper->options.scaling());
  ASSERT_EQ(bank.num_modules(), 3);
  torch::manual_seed(3);
  auto x = torch::randn({2, 4, 64});
  auto f = [&](int64_t m) {  // module m alone: s · (x A_mᵀ) B_mᵀ
    auto [a, b] = hyper->generate(site, hyper->task_embeddings[m].unsqueeze(0));
    return s * torch::matmul(torch::matmul(x, a[0].t()), b[0].t());
  };
  torch::NoGradGuard g;
  auto idx = ids({1, 2}).view({2, 1});
  auto hard = bank.selected({x, {}}, idx, torch::ones({2, 1}));
  EXPECT_TRUE(torch::allclose(hard[0], f(1)[0], 1e-5, 1e-6));
  EXPECT_TRUE(torch::allclose(hard[1], f(2)[1], 1e-5, 1e-6));
  EXPECT_GT((f(1) - f(2)).abs().max().item<double>(), 1e-3);  // the rows' modules differ
  auto none = bank.selected({x, {}}, ids({-1, 0}).view({2, 1}), torch::ones({2, 1}));
  EXPECT_EQ(none[0].abs().max().item<double>(), 0.0);  // id -1: no module
  auto w = torch::tensor({{0.2, 0.5, 0.3}, {0.0, 0.0, 1.0}});
  auto soft = bank.mixed({x, {}}, w);
  auto want0 = 0.2 * f(0)[0] + 0.5 * f(1)[0] + 0.3 * f(2)[0];
  EXPECT_TRUE(torch::allclose(soft[0], want0, 1e-5, 1e-6));
  EXPECT_TRUE(torch::allclose(soft[1], f(2)[1], 1e-5, 1e-6));
  auto avg = bank.averaged({x, {}}, w);
  auto a_bar = torch::zeros({4, 64}), b_bar = torch::zeros({64, 4});
  for (int64_t m = 0; m < 3; ++m) {
    auto [a, b] = hyper->generate(site, hyper->task_embeddings[m].unsqueeze(0));
    a_bar += w[0][m].item<double>() * a[0], b_bar += w[0][m].item<double>() * b[0];
  }
  EXPECT_TRUE(torch::allclose(avg[0], s * torch::matmul(torch::matmul(x[0], a_bar.t()), b_bar.t()), 1e-5, 1e-6));
  EXPECT_GT((avg[0] - soft[0]).abs().max().item<double>(), 1e-6);  // averaging parameters ≠ mixing outputs
  EXPECT_TRUE(torch::allclose(avg[1], f(2)[1], 1e-5, 1e-6));       // one-hot: the module itself
}
