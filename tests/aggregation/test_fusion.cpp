// Function and input aggregation on block sites: Stack equals the adapters in sequence by
// hand, Parallel the sum, Average the weighted sum, replicated Parallel each adapter on its
// copy of the batch; AdapterFusion with W_v = I over one adapter equals that adapter, trains
// only its own parameters, saves/loads as MODULA_FUSION; concatenated prompts equal one
// prompt holding both.
#include <gtest/gtest.h>

#include "modula/aggregation/average.h"
#include "modula/aggregation/fusion.h"
#include "modula/aggregation/parallel.h"
#include "modula/aggregation/prompt_concat.h"
#include "modula/aggregation/stack.h"
#include "modula/backbone/registry.h"
#include "modula/composition/registry.h"
#include "modula/io/peft.h"
#include "modula/modules/adapter.h"
#include "modula/modules/bottleneck.h"
#include "modula/modules/lora.h"
#include "modula/modules/targets.h"
#include "support/temp_dir.h"

using modula::testing::fixture;
using modula::testing::TempDir;
using json = nlohmann::json;

namespace {

std::shared_ptr<modula::Backbone> load(const std::string& family = "llama") {
  return modula::load_backbone(fixture("hf/models/" + family));
}

modula::BackboneInput batch() {
  modula::BackboneInput in;
  in.input_ids = torch::arange(10, 34, torch::kInt64).view({2, 12});
  in.attention_mask = torch::ones({2, 12}, torch::kInt64);
  return in;
}

// A bottleneck adapter after every feed-forward block, moved off the identity.
modula::Adapter bottleneck(modula::Backbone& model, const std::string& name, double amount = 0.3,
                           bool attention = false) {
  json c = {
      {"peft_type", "MODULA_BOTTLENECK"}, {"config", attention ? "houlsby" : "pfeiffer"}, {"reduction_factor", 4}};
  auto a = modula::add_adapter(model, c, name);
  torch::NoGradGuard g;
  for (auto& p : a.parameters()) p.add_(torch::randn_like(p) * amount);
  return a;
}

// The adapter's module at a block site.
std::shared_ptr<modula::BottleneckImpl> at(const modula::Adapter& a, const std::string& site) {
  for (const auto& m : a.modules)
    if (m.site == site) return std::dynamic_pointer_cast<modula::BottleneckImpl>(m.module);
  throw std::runtime_error("no module at " + site);
}

// f(h) = up(relu(down(h))) written out, the bottleneck of Pfeiffer et al. 2021.
torch::Tensor f_by_hand(const modula::BottleneckImpl& m, const torch::Tensor& h) {
  auto down = torch::relu(torch::matmul(h, m.adapter_down->weight.t()) + m.adapter_down->bias);
  return torch::matmul(down, m.adapter_up->weight.t()) + m.adapter_up->bias;
}

double max_diff(const torch::Tensor& a, const torch::Tensor& b) { return (a - b).abs().max().item<double>(); }

const std::string kSite = "model.layers.0.mlp";

struct TwoAdapters : ::testing::Test {
  void SetUp() override {
    torch::manual_seed(0);
    model = load();
    a = bottleneck(*model, "a");
    b = bottleneck(*model, "b");
    ma = at(a, kSite);
    mb = at(b, kSite);
    const int64_t H = model->config().hidden_size;
    x = torch::randn({2, 3, H});
    y = torch::randn({2, 3, H});
  }
  std::shared_ptr<modula::Backbone> model;
  modula::Adapter a, b;
  std::shared_ptr<modula::BottleneckImpl> ma, mb;
  torch::Tensor x, y;
};

TEST_F(TwoAdapters, StackEqualsTheAdaptersInSequenceByHand) {
  torch::NoGradGuard g;
  auto stack = modula::Stack(std::vector<std::shared_ptr<modula::SiteModule>>{ma, mb});
  auto y1 = y + f_by_hand(*ma, y);    // language adapter
  auto y2 = y1 + f_by_hand(*mb, y1);  // task adapter on its output
  EXPECT_LE(max_diff(stack->transform_block(x, y), y2), 1e-5);
}

TEST_F(TwoAdapters, StackOverTheModelEqualsAttachingInOrder) {
  torch::NoGradGuard g;
  auto native = model->forward(batch()).logits;  // a then b at every site, the site's own order
  for (auto& [path, site] : modula::block_sites(*model)) {
    if (!site->module("a")) continue;
    auto stack = modula::Stack(std::vector<std::shared_ptr<modula::SiteModule>>{site->module("a"), site->module("b")});
    modula::attach_composition(*site, "stack", stack.ptr());
    EXPECT_FALSE(site->module("a")->enabled);  // runs inside the stack, not twice
  }
  EXPECT_LE(max_diff(model->forward(batch()).logits, native), 1e-5);
  // Reversed order differs: stacking is not commutative.
  for (auto& [path, site] : modula::block_sites(*model)) {
    if (!site->module("stack")) continue;
    modula::detach_composition(*site, "stack");
    auto rev = modula::Stack(std::vector<std::shared_ptr<modula::SiteModule>>{site->module("b"), site->module("a")});
    modula::attach_composition(*site, "stack", rev.ptr());
  }
  EXPECT_GT(max_diff(model->forward(batch()).logits, native), 1e-4);
}

TEST_F(TwoAdapters, ParallelEqualsTheSum) {
  torch::NoGradGuard g;
  auto par = modula::Parallel(std::vector<std::shared_ptr<modula::SiteModule>>{ma, mb});
  EXPECT_LE(max_diff(par->transform_block(x, y), y + f_by_hand(*ma, y) + f_by_hand(*mb, y)), 1e-5);
}

TEST_F(TwoAdapters, NestedAndMixedChildrenEqualTheirFormula) {
  torch::NoGradGuard g;
  // A nested composite and an adapter (one by one) and adapters of different widths
  // (not batchable) give the same formulas as the batched path.
  auto stack = modula::Stack(std::vector<std::shared_ptr<modula::SiteModule>>{ma, mb});
  auto par = modula::Parallel(std::vector<std::shared_ptr<modula::SiteModule>>{stack.ptr(), ma});
  EXPECT_LE(max_diff(par->transform_block(x, y), stack->transform_block(x, y) + f_by_hand(*ma, y)), 1e-5);
  auto wide = std::make_shared<modula::BottleneckImpl>(modula::BottleneckOptions(y.size(-1)).reduction_factor(2));
  wide->adapter_up->weight.normal_();
  auto mixed = modula::Parallel(std::vector<std::shared_ptr<modula::SiteModule>>{ma, wide});
  EXPECT_LE(max_diff(mixed->transform_block(x, y), y + f_by_hand(*ma, y) + f_by_hand(*wide, y)), 1e-5);
  ma->scale = 0.5;  // per-adapter scale enters the batched path too
  auto both = modula::Parallel(std::vector<std::shared_ptr<modula::SiteModule>>{ma, mb});
  EXPECT_LE(max_diff(both->transform_block(x, y), y + 0.5 * f_by_hand(*ma, y) + f_by_hand(*mb, y)), 1e-5);
}

TEST_F(TwoAdapters, AverageEqualsTheNormalisedWeightedSum) {
  torch::NoGradGuard g;
  auto avg = modula::Average(std::vector<std::shared_ptr<modula::SiteModule>>{ma, mb}, std::vector<double>{1.4, 0.6});
  EXPECT_LE(max_diff(avg->transform_block(x, y), y + 0.7 * f_by_hand(*ma, y) + 0.3 * f_by_hand(*mb, y)), 1e-5);
  EXPECT_THROW(modula::Average(std::vector<std::shared_ptr<modula::SiteModule>>{ma, mb}, std::vector<double>{1, -1}),
               std::invalid_argument);
  EXPECT_THROW(modula::Average(std::vector<std::shared_ptr<modula::SiteModule>>{ma, mb}, std::vector<double>{1}),
               std::invalid_argument);
}

TEST_F(TwoAdapters, ReplicatedParallelRunsEachAdapterOnItsCopyOfTheBatch) {
  torch::NoGradGuard g;
  a.set_enabled(false);
  auto only_b = model->forward(batch()).logits;
  a.set_enabled(true);
  b.set_enabled(false);
  auto only_a = model->forward(batch()).logits;
  b.set_enabled(true);
  for (auto& [path, site] : modula::block_sites(*model)) {
    if (!site->module("a")) continue;
    auto par =
        modula::Parallel(std::vector<std::shared_ptr<modula::SiteModule>>{site->module("a"), site->module("b")}, true);
    modula::attach_composition(*site, "parallel", par.ptr());
  }
  auto both = model->forward(modula::replicate_batch(batch(), 2)).logits;  // [2B, T, V]
  ASSERT_EQ(both.size(0), 4);
  EXPECT_LE(max_diff(both.narrow(0, 0, 2), only_a), 1e-5);
  EXPECT_LE(max_diff(both.narrow(0, 2, 2), only_b), 1e-5);
}

TEST_F(TwoAdapters, CompositionsRejectBadMembers) {
  EXPECT_THROW(modula::Stack(std::vector<std::shared_ptr<modula::SiteModule>>{}), std::invalid_argument);
  auto lora = std::make_shared<modula::LoraImpl>(modula::LoraOptions(4, 4));  // a linear-site module
  EXPECT_THROW(modula::Stack(std::vector<std::shared_ptr<modula::SiteModule>>{ma, lora}), std::invalid_argument);
  try {
    auto other_site = at(a, "model.layers.1.mlp");
    auto stack = modula::Stack(std::vector<std::shared_ptr<modula::SiteModule>>{ma, other_site});
    auto sites = modula::block_sites(*model);
    for (auto& [path, site] : sites)
      if (path == kSite) modula::attach_composition(*site, "stack", stack.ptr());
    FAIL() << "attaching a member of another site must throw";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("not attached at this site"), std::string::npos) << e.what();
  }
}

TEST_F(TwoAdapters, FusionWithIdentityValuesOverOneAdapterEqualsThatAdapter) {
  torch::NoGradGuard g;
  auto fusion = modula::Fusion(modula::FusionOptions(y.size(-1)), std::vector<std::shared_ptr<modula::SiteModule>>{ma});
  // Near-identity init: W_v = I + ε off the diagonal.
  EXPECT_LE(max_diff(fusion->transform_block(x, y), y + f_by_hand(*ma, y)), 1e-3);
  fusion->value->weight.copy_(torch::eye(y.size(-1)));
  EXPECT_LE(max_diff(fusion->transform_block(x, y), ma->transform_block(x, y)), 1e-5);
  EXPECT_LE(fusion->value_regularization().item<double>(), 1e-12);
}

TEST_F(TwoAdapters, FusionOverTheModelWithIdentityValuesEqualsTheAdapter) {
  torch::NoGradGuard g;
  b.set_enabled(false);
  auto only_a = model->forward(batch()).logits;
  b.set_enabled(true);
  auto fusion = modula::add_fusion(*model, {&a});
  for (auto& [path, f] : fusion.sites) f->value->weight.copy_(torch::eye(f->options.features()));
  EXPECT_EQ(fusion.sites.size(), static_cast<size_t>(model->config().num_hidden_layers));
  b.set_enabled(false);  // b stays attached natively; switch it off to compare with a alone
  EXPECT_LE(max_diff(model->forward(batch()).logits, only_a), 1e-5);
}

TEST_F(TwoAdapters, FusionAttentionIsASoftmaxWithTemperature) {
  torch::NoGradGuard g;
  std::vector<std::shared_ptr<modula::SiteModule>> kids{ma, mb};
  auto sharp = modula::Fusion(modula::FusionOptions(y.size(-1)).init_std(1.0), kids);
  auto flat = modula::Fusion(modula::FusionOptions(y.size(-1)).init_std(1.0).temperature(1e9), kids);
  sharp->transform_block(x, y);
  flat->transform_block(x, y);
  EXPECT_LE(max_diff(sharp->last_attention().sum(-1), torch::ones({2, 3})), 1e-5);
  EXPECT_LE(max_diff(flat->last_attention(), torch::full({2, 3, 2}, 0.5)), 1e-5);  // T → ∞: uniform
  EXPECT_GT(max_diff(sharp->last_attention(), torch::full({2, 3, 2}, 0.5)), 1e-3);
  EXPECT_THROW(modula::FusionOptions(8).temperature(0).validate(), std::invalid_argument);
}

TEST_F(TwoAdapters, FusionTrainsOnlyItsOwnParameters) {
  modula::freeze_backbone(*model);
  auto fusion = modula::add_fusion(*model, {&a, &b});
  const int64_t H = model->config().hidden_size, L = model->config().num_hidden_layers;
  EXPECT_EQ(fusion.num_trainable(), L * (3 * H * H + 2 * H));  // W_q, b_q, W_k, b_k, W_v per layer
  torch::optim::Adam opt(fusion.parameters(), torch::optim::AdamOptions(1e-2));
  auto in = batch();
  auto ids = in.input_ids;
  auto loss_of = [&] {
    auto logits = model->forward(in).logits;
    return torch::nn::functional::cross_entropy(logits.narrow(1, 0, 11).reshape({-1, logits.size(-1)}),
                                                ids.narrow(1, 1, 11).reshape({-1}));
  };
  double first = 0, last = 0;
  for (int step = 0; step < 15; ++step) {
    opt.zero_grad();
    auto loss = loss_of() + 0.01 * fusion.regularization_loss();
    loss.backward();
    if (step == 0) {
      first = loss.item<double>();
      for (const auto& p : a.parameters()) EXPECT_FALSE(p.grad().defined());
      for (const auto& p : b.parameters()) EXPECT_FALSE(p.grad().defined());
      for (const auto& p : model->named_parameters())
        if (p.key().find(".adapters.") == std::string::npos) {
          EXPECT_FALSE(p.value().grad().defined()) << p.key();
        }
      double norm = 0;
      for (const auto& p : fusion.parameters()) norm += p.grad().abs().sum().item<double>();
      EXPECT_GT(norm, 0.0);
    }
    opt.step();
    last = loss.item<double>();
  }
  EXPECT_LT(last, first - 0.05) << "first " << first << " last " << last;
}

TEST_F(TwoAdapters, FusionSavesAndLoadsAsAModulaFolder) {
  TempDir dir;
  auto fusion = modula::add_fusion(*model, {&a, &b}, {{"temperature", 2.0}}, "ab");
  {
    torch::NoGradGuard g;
    for (auto& p : fusion.parameters()) p.add_(torch::randn_like(p) * 0.1);
  }
  torch::NoGradGuard g;
  auto expected = model->forward(batch()).logits;
  modula::save_fusion(fusion, dir / "fusion");
  modula::save_adapter(a, dir / "a");
  modula::save_adapter(b, dir / "b");
  auto folder = modula::io::read_peft_folder(dir / "fusion");
  EXPECT_EQ(folder.peft_type, "MODULA_FUSION");
  EXPECT_EQ(folder.config["adapters"], json({"a", "b"}));
  EXPECT_EQ(folder.config["temperature"], 2.0);
  EXPECT_TRUE(folder.tensors.count("base_model.model.model.layers.0.mlp.fusion.value.weight"));

  auto fresh = load();
  auto a2 = modula::load_adapter(*fresh, dir / "a", "a");
  auto b2 = modula::load_adapter(*fresh, dir / "b", "b");
  auto loaded = modula::load_fusion(*fresh, dir / "fusion", {&b2, &a2}, "ab");  // order from the folder
  EXPECT_EQ(loaded.adapters, (std::vector<std::string>{"a", "b"}));
  EXPECT_LE(max_diff(fresh->forward(batch()).logits, expected), 1e-5);

  auto other = load();
  auto a3 = modula::load_adapter(*other, dir / "a", "a");
  try {
    modula::load_fusion(*other, dir / "fusion", {&a3});
    FAIL() << "a missing member must throw";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("member adapter 'b'"), std::string::npos) << e.what();
  }
}

TEST_F(TwoAdapters, FusionFolderWithAWrongShapeNamesTheTensor) {
  TempDir dir;
  auto fusion = modula::add_fusion(*model, {&a, &b});
  modula::save_fusion(fusion, dir / "fusion");
  auto folder = modula::io::read_peft_folder(dir / "fusion");
  modula::io::NamedTensors tensors;
  for (auto& [k, t] : folder.tensors)
    tensors.emplace_back(k, k.find("layers.1.mlp.fusion.key.bias") != std::string::npos ? torch::zeros({3}) : t);
  modula::io::write_peft_folder(dir / "bad", folder.config, tensors);
  auto fresh = load();
  auto a2 = bottleneck(*fresh, "a");
  auto b2 = bottleneck(*fresh, "b");
  try {
    modula::load_fusion(*fresh, dir / "bad", {&a2, &b2});
    FAIL() << "a wrong shape must throw";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("layers.1.mlp.fusion.key.bias' has shape [3]"), std::string::npos) << e.what();
  }
  // The failed load left nothing attached: a and b run natively again.
  for (auto& [path, site] : modula::block_sites(*fresh)) EXPECT_FALSE(site->module("fusion")) << path;
}

TEST(ConcatenatedPrompt, EqualsOneNativePromptHoldingBoth) {
  torch::manual_seed(0);
  auto model = load();
  json c = {{"peft_type", "PROMPT_TUNING"}, {"num_virtual_tokens", 2}};
  auto p1 = modula::add_adapter(*model, c, "p1");
  c["num_virtual_tokens"] = 3;
  auto p2 = modula::add_adapter(*model, c, "p2");
  auto prompt1 = std::dynamic_pointer_cast<modula::PromptTuningImpl>(p1.input);
  auto prompt2 = std::dynamic_pointer_cast<modula::PromptTuningImpl>(p2.input);
  auto both = modula::ConcatenatedPrompt(std::vector<std::shared_ptr<modula::PromptTuningImpl>>{prompt1, prompt2});
  EXPECT_EQ(both->num_virtual_tokens(), 5);

  auto single =
      std::make_shared<modula::PromptTuningImpl>(modula::PromptTuningOptions(5, model->config().hidden_size), *model);
  {
    torch::NoGradGuard g;
    single->embedding.copy_(torch::cat({prompt1->embedding, prompt2->embedding}, 0));
  }
  torch::NoGradGuard g;
  auto expected = modula::forward_with(*model, {single}, batch()).logits;
  auto got = modula::forward_with(*model, {both.ptr()}, batch()).logits;
  ASSERT_EQ(got.sizes(), expected.sizes());
  EXPECT_EQ(got.size(1), 12 + 5);
  EXPECT_LE(max_diff(got, expected), 1e-5);
  EXPECT_LE(max_diff(both->prompt_embeddings(), single->embedding), 0.0);
  // Order matters: [P2; P1] is another prompt.
  auto swapped = modula::ConcatenatedPrompt(std::vector<std::shared_ptr<modula::PromptTuningImpl>>{prompt2, prompt1});
  EXPECT_GT(max_diff(modula::forward_with(*model, {swapped.ptr()}, batch()).logits, expected), 1e-4);
  EXPECT_THROW(modula::ConcatenatedPrompt(std::vector<std::shared_ptr<modula::PromptTuningImpl>>{}),
               std::invalid_argument);
}

}  // namespace
