// Module folders of every modula type load by peft_type (what --adapter takes), give the
// outputs of the module that was saved, honour the scale, and merge into the weights.
#include <gtest/gtest.h>

#include "modula/backbone/registry.h"
#include "modula/composition/registry.h"
#include "modula/modules/bitfit.h"
#include "modula/modules/bottleneck.h"
#include "modula/modules/hypernetwork.h"
#include "modula/modules/sparse_ft.h"
#include "modula/modules/targets.h"
#include "support/temp_dir.h"
#include "support/watchdog.h"

using modula::testing::fixture;
using modula::testing::TempDir;

namespace {

std::shared_ptr<modula::Backbone> gpt2() { return modula::load_backbone(fixture("hf/models/gpt2")); }

torch::Tensor logits(modula::Backbone& model) {
  torch::NoGradGuard g;
  modula::BackboneInput in;
  in.input_ids = torch::arange(3, 19, torch::kInt64).view({2, 8});
  return model.forward(in).logits;
}

void randomize(const std::vector<torch::Tensor>& params, double std) {
  torch::NoGradGuard g;
  torch::manual_seed(7);
  for (auto p : params) p.normal_(0, std);
}

// Saves a module made by `make` (which returns the model's logits with it active), then
// loads the folder onto a fresh model through load_module_folders.
struct Saved {
  TempDir dir;
  torch::Tensor expected, base;
};

}  // namespace

TEST(ModuleFolder, SparseDiffLoadsAppliedAndScaled) {
  Saved s;
  {
    auto model = gpt2();
    s.base = logits(*model);
    auto diff = modula::random_sparse_diff(
        *model, modula::SparseDiffOptions().target_parameters({"re:.*c_fc\\.weight"}).k(64), 3);
    randomize({diff->values(diff->names()[0]), diff->values(diff->names()[1])}, 0.5);
    modula::save_sparse_diff(diff, s.dir.path);
    diff->apply(*model, 0.5);
    s.expected = logits(*model);
  }
  auto model = gpt2();
  auto loaded = modula::load_module_folders(*model, {s.dir.path + ":0.5"});
  ASSERT_EQ(loaded.size(), 1u);
  EXPECT_EQ(loaded[0].peft_type, "MODULA_SPARSE_FT");
  EXPECT_TRUE(torch::allclose(logits(*model), s.expected, 1e-5, 1e-5));
  EXPECT_FALSE(torch::allclose(logits(*model), s.base, 1e-3, 1e-3));
  loaded[0].set_enabled(false);  // the handle takes θ + scale·φ back out of the weights
  EXPECT_TRUE(torch::allclose(logits(*model), s.base, 1e-5, 1e-5));
  loaded[0].set_enabled(true);
  EXPECT_TRUE(torch::allclose(logits(*model), s.expected, 1e-5, 1e-5));
  loaded[0].remove();
  EXPECT_TRUE(torch::allclose(logits(*model), s.base, 1e-5, 1e-5));
}

TEST(ModuleFolder, BitFitLoadsBiases) {
  Saved s;
  {
    auto model = gpt2();
    s.base = logits(*model);
    modula::BitFit bitfit(*model, modula::BitFitOptions());
    randomize(bitfit->parameters(), 0.2);
    bitfit->save(s.dir.path);
    s.expected = logits(*model);
  }
  auto model = gpt2();
  auto loaded = modula::load_module_folders(*model, {s.dir.path});
  ASSERT_EQ(loaded.size(), 1u);
  EXPECT_EQ(loaded[0].peft_type, "MODULA_BITFIT");
  EXPECT_TRUE(torch::allclose(logits(*model), s.expected, 1e-5, 1e-5));
  EXPECT_FALSE(torch::allclose(logits(*model), s.base, 1e-3, 1e-3));
  loaded[0].set_scale(0.0);  // θ₀ + 0·(θ − θ₀): the original biases
  EXPECT_TRUE(torch::allclose(logits(*model), s.base, 1e-5, 1e-5));
  loaded[0].set_scale(1.0);
  EXPECT_TRUE(torch::allclose(logits(*model), s.expected, 1e-5, 1e-5));
  loaded[0].remove();
  EXPECT_TRUE(torch::allclose(logits(*model), s.base, 1e-5, 1e-5));
}

TEST(ModuleFolder, HyperLoraTaskRowScaleAndMerge) {
  Saved s;
  torch::Tensor half;
  {
    auto model = gpt2();
    s.base = logits(*model);
    auto hyper = modula::HyperLora(
        *model, modula::HyperLoraOptions(2).r(2).hidden(8).task_embedding_dim(4).layer_embedding_dim(4).target_modules(
                    {"c_attn", "c_fc"}));
    randomize(hyper->parameters(), 0.3);
    modula::save_hyper_lora(*hyper, s.dir.path);
    hyper->attach(*model, "h");
    hyper->set_task_ids(torch::tensor({1}, torch::kLong));
    s.expected = logits(*model);
  }
  auto model = gpt2();
  auto loaded = modula::load_module_folders(*model, {s.dir.path}, /*task=*/1);
  ASSERT_EQ(loaded.size(), 1u);
  EXPECT_TRUE(torch::allclose(logits(*model), s.expected, 1e-5, 1e-5));
  EXPECT_FALSE(torch::allclose(logits(*model), s.base, 1e-3, 1e-3));
  loaded[0].merge();  // folds B·A of task 1 into the weights and detaches
  EXPECT_TRUE(torch::allclose(logits(*model), s.expected, 1e-4, 1e-4));

  auto other = gpt2();
  auto task0 = modula::load_module_folders(*other, {s.dir.path}, 0);
  EXPECT_FALSE(torch::allclose(logits(*other), s.expected, 1e-3, 1e-3));
  auto scaled = gpt2();
  auto zero = modula::load_module_folders(*scaled, {s.dir.path + ":0"}, 1);
  EXPECT_TRUE(torch::allclose(logits(*scaled), s.base, 1e-6, 1e-6));
}

TEST(ModuleFolder, BottleneckAttachesButDoesNotMerge) {
  TempDir dir;
  {
    auto model = gpt2();
    auto a = modula::add_adapter(*model, {{"peft_type", "MODULA_BOTTLENECK"}, {"config", "pfeiffer"}}, "b");
    modula::save_adapter(a, dir.path);
  }
  auto model = gpt2();
  auto loaded = modula::load_module_folders(*model, {dir.path});
  ASSERT_EQ(loaded.size(), 1u);
  EXPECT_EQ(loaded[0].peft_type, "MODULA_BOTTLENECK");
  EXPECT_FALSE(loaded[0].mergeable());
  EXPECT_THROW(loaded[0].merge(), std::invalid_argument);
}

TEST(ModuleFolder, BadSpecsAreClear) {
  auto model = gpt2();
  try {
    modula::load_module_folders(*model, {fixture("hf/adapters/gpt2-lora") + ":half"});
    FAIL() << "no exception";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("scale after ':' must be a number"), std::string::npos) << e.what();
  }
  EXPECT_ANY_THROW(modula::load_module_folders(*model, {fixture("hf/models/gpt2")}));  // not a module folder
}

// Regression (issue 14): a catastrophically backtracking target_modules regex hung
// (std::regex, unbounded); the matcher is bounded and the pattern named in the error.
TEST(Targets, BacktrackingRegexIsAnErrorNotAHang) {
  const std::string path = "model.layers.0.self_attn.q_proj.lora_A.default.weight.xxxxxxxxxx";
  modula::testing::within_seconds(5, [&] {
    try {
      modula::matches_target(nlohmann::json("(.*)*(.*)*(.*)*(.*)*zzz"), path);
      ADD_FAILURE() << "no exception";
    } catch (const std::invalid_argument& e) {
      EXPECT_NE(std::string(e.what()).find("'(.*)*(.*)*(.*)*(.*)*zzz'"), std::string::npos) << e.what();
    }
  });
  EXPECT_TRUE(modula::matches_target(nlohmann::json(R"(.*\.(q_proj|v_proj))"), "model.layers.0.self_attn.q_proj"));
  EXPECT_FALSE(modula::matches_target(nlohmann::json(R"(.*\.(q_proj|v_proj))"), "model.layers.0.self_attn.k_proj"));
  EXPECT_THROW(modula::matches_target(nlohmann::json("(["), "a"), std::invalid_argument);
}
