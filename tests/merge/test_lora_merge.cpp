// LoRA merges (PEFT add_weighted_adapter) on the tiny llama fixture, by hand.
#include <gtest/gtest.h>

#include "modula/backbone/registry.h"
#include "modula/composition/registry.h"
#include "modula/merge/lora_merge.h"
#include "modula/merge/task_vectors.h"
#include "modula/modules/lora.h"
#include "support/temp_dir.h"

using namespace modula;
using nlohmann::json;

namespace {

struct LoraMerge : ::testing::Test {
  std::shared_ptr<Backbone> model = load_backbone(modula::testing::fixture("hf/models/llama"));
  // a: r 2, alpha 4 (s = 2) on q_proj; b: r 2, alpha 2 (s = 1) on q_proj and v_proj.
  Adapter a = make("a", json{{"peft_type", "LORA"}, {"r", 2}, {"lora_alpha", 4}, {"target_modules", {"q_proj"}}}, 1);
  Adapter b =
      make("b", json{{"peft_type", "LORA"}, {"r", 2}, {"lora_alpha", 2}, {"target_modules", {"q_proj", "v_proj"}}}, 2);

  Adapter make(const std::string& name, const json& config, uint64_t seed) {
    auto ad = add_adapter(*model, config, name);
    torch::manual_seed(seed);
    torch::NoGradGuard no_grad;
    for (auto& m : ad.modules) {
      auto l = lora(m);
      l->lora_A.copy_(torch::randn_like(l->lora_A));
      l->lora_B.copy_(torch::randn_like(l->lora_B));
    }
    return ad;
  }
  static LoraImpl* lora(const AttachedModule& m) { return std::dynamic_pointer_cast<LoraImpl>(m.module).get(); }
  static LoraImpl* at(const Adapter& ad, const std::string& site) {
    for (const auto& m : ad.modules)
      if (m.site == site) return lora(m);
    return nullptr;
  }
  static constexpr const char* kQ = "model.layers.0.self_attn.q_proj";
  static constexpr const char* kV = "model.layers.0.self_attn.v_proj";
};

std::string message_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::invalid_argument& e) {
    return e.what();
  }
  return "(no exception)";
}

}  // namespace

// cat is exact: [B_a B_b] [w_a s_a A_a; w_b s_b A_b] = w_a s_a B_a A_a + w_b s_b B_b A_b.
TEST_F(LoraMerge, CatIsTheExactWeightedSumOfDeltas) {
  auto m = merge_lora_adapters(*model, {a, b}, LoraMergeOptions({0.5, 4.0}).combination_type("cat"), "m");
  EXPECT_EQ(m.config["r"], 4);
  EXPECT_EQ(m.config["lora_alpha"], 4);  // scaling 1
  EXPECT_EQ(m.config["target_modules"], json({"q_proj", "v_proj"}));
  auto want_q = 0.5 * at(a, kQ)->delta_weight() + 4.0 * at(b, kQ)->delta_weight();
  EXPECT_TRUE(torch::allclose(at(m, kQ)->delta_weight(), want_q, 1e-5, 1e-5));
  // v_proj only in b: rows 2..3 of A stay zero.
  EXPECT_TRUE(torch::allclose(at(m, kV)->delta_weight(), 4.0 * at(b, kV)->delta_weight(), 1e-5, 1e-5));
  EXPECT_EQ(at(m, kV)->lora_A.narrow(0, 2, 2).abs().sum().item<float>(), 0.0f);
}

// linear: √(w s) on each factor. w_a s_a = 0.5·2 = 1, w_b s_b = 4·1 = 4:
// A = 1·A_a + 2·A_b, B = 1·B_a + 2·B_b.
TEST_F(LoraMerge, LinearScalesEachFactorBySqrtWeightTimesScaling) {
  auto m = merge_lora_adapters(*model, {a, b}, LoraMergeOptions({0.5, 4.0}).combination_type("linear"), "m");
  EXPECT_TRUE(torch::allclose(at(m, kQ)->lora_A, at(a, kQ)->lora_A + 2 * at(b, kQ)->lora_A, 1e-5, 1e-5));
  EXPECT_TRUE(torch::allclose(at(m, kQ)->lora_B, at(a, kQ)->lora_B + 2 * at(b, kQ)->lora_B, 1e-5, 1e-5));
  EXPECT_TRUE(torch::allclose(at(m, kV)->lora_A, 2 * at(b, kV)->lora_A, 1e-5, 1e-5));  // only b there
}

// svd with a rank that holds the whole sum (2 + 2) reproduces Σ w_i s_i B_i A_i exactly.
TEST_F(LoraMerge, SvdWithFullRankIsExact) {
  auto m = merge_lora_adapters(*model, {a, b}, LoraMergeOptions({0.5, 4.0}).combination_type("svd").svd_rank(4), "m");
  auto want = 0.5 * at(a, kQ)->delta_weight() + 4.0 * at(b, kQ)->delta_weight();
  EXPECT_TRUE(torch::allclose(at(m, kQ)->delta_weight(), want, 1e-4, 1e-4));
  // Default rank = max input rank (2): the best rank-2 approximation, so the error is the
  // third and fourth singular values' energy.
  auto m2 = merge_lora_adapters(*model, {a, b}, LoraMergeOptions({0.5, 4.0}).combination_type("svd"), "m2");
  EXPECT_EQ(at(m2, kQ)->lora_A.size(0), 2);
  auto s = torch::linalg_svdvals(want);
  double err = (at(m2, kQ)->delta_weight() - want).norm().item<double>();
  EXPECT_NEAR(err, s.narrow(0, 2, 2).norm().item<double>(), 1e-4);
}

// svd_clamp: both factors clamped to ±q, q = the 0.9-quantile of their entries (PEFT).
TEST_F(LoraMerge, SvdClampBoundsTheFactors) {
  auto plain = merge_lora_adapters(*model, {a, b}, LoraMergeOptions({0.5, 4.0}), "plain");
  auto m = merge_lora_adapters(*model, {a, b}, LoraMergeOptions({0.5, 4.0}).svd_clamp(0.9), "m");
  auto p = at(plain, kQ);
  auto q = torch::quantile(torch::cat({p->lora_B.flatten(), p->lora_A.flatten()}), 0.9).item<double>();
  EXPECT_TRUE(torch::allclose(at(m, kQ)->lora_B, p->lora_B.clamp(-q, q), 1e-6, 1e-6));
  EXPECT_TRUE(torch::allclose(at(m, kQ)->lora_A, p->lora_A.clamp(-q, q), 1e-6, 1e-6));
  EXPECT_GT(p->lora_B.abs().max().item<double>(), q);  // the clamp did something
}

// ties on the factors: the PEFT rule of task_vectors.h applied to A and B separately.
TEST_F(LoraMerge, TiesAppliesTrimElectMergeToEachFactor) {
  auto m = merge_lora_adapters(*model, {a, b}, LoraMergeOptions({0.5, 4.0}).combination_type("ties").density(0.5), "m");
  auto stacked = torch::stack({at(a, kQ)->lora_A, at(b, kQ)->lora_A});
  auto kept = magnitude_prune(stacked, 0.5);
  auto mask = majority_sign_mask(kept, SignMethod::Total);
  auto want = disjoint_merge(kept * torch::tensor({1.0f, 2.0f}).view({2, 1, 1}), mask);  // √(w s) = 1, 2
  EXPECT_TRUE(torch::allclose(at(m, kQ)->lora_A, want, 1e-6, 1e-6));
}

TEST_F(LoraMerge, DareIsReproducibleWithASeed) {
  auto o = LoraMergeOptions({0.5, 4.0}).combination_type("dare_ties").density(0.5).seed(3);
  auto x = merge_lora_adapters(*model, {a, b}, o, "x");
  auto y = merge_lora_adapters(*model, {a, b}, o, "y");
  auto z = merge_lora_adapters(*model, {a, b}, LoraMergeOptions(o).seed(4), "z");
  EXPECT_TRUE(torch::equal(at(x, kQ)->lora_A, at(y, kQ)->lora_A));
  EXPECT_FALSE(torch::equal(at(x, kQ)->lora_A, at(z, kQ)->lora_A));
}

// The merged adapter is an ordinary LORA adapter: saved and loaded, it gives the same output.
TEST_F(LoraMerge, MergedAdapterSavesAndLoads) {
  auto m = merge_lora_adapters(*model, {a, b}, LoraMergeOptions({0.5, 4.0}).combination_type("cat"), "m");
  a.set_enabled(false);
  b.set_enabled(false);
  modula::testing::TempDir dir;
  save_adapter(m, dir / "m");
  BackboneInput in;
  in.input_ids = torch::tensor({{1, 2, 3, 4}});
  torch::NoGradGuard no_grad;
  auto want = model->forward(in).logits;
  remove_adapter(m);
  auto base = model->forward(in).logits;
  auto reloaded = load_adapter(*model, dir / "m", "m2");
  auto got = model->forward(in).logits;
  EXPECT_TRUE(torch::allclose(got, want, 1e-5, 1e-5));
  EXPECT_FALSE(torch::allclose(base, want, 1e-3, 1e-3));  // the merge changes the output
}

TEST_F(LoraMerge, BadRequestsNameTheField) {
  EXPECT_NE(message_of([&] {
              merge_lora_adapters(*model, {a, b}, LoraMergeOptions({1.0}), "m");
            }).find("weights has 1 entries for 2 adapters"),
            std::string::npos);
  EXPECT_NE(message_of([&] {
              merge_lora_adapters(*model, {a, b}, LoraMergeOptions({1, 1}).combination_type("avg"), "m");
            }).find("combination_type 'avg' is not known"),
            std::string::npos);
  EXPECT_NE(message_of([&] {
              merge_lora_adapters(*model, {a, b}, LoraMergeOptions({1, 1}).combination_type("ties"), "m");
            }).find("'ties' needs density"),
            std::string::npos);
  EXPECT_NE(message_of([&] {
              merge_lora_adapters(*model, {a, b}, LoraMergeOptions({1, -1}).combination_type("linear"), "m");
            }).find("negative"),
            std::string::npos);
  auto c = make("c", json{{"peft_type", "LORA"}, {"r", 3}, {"target_modules", {"q_proj"}}}, 3);
  EXPECT_NE(message_of([&] {
              merge_lora_adapters(*model, {a, c}, LoraMergeOptions({1, 1}).combination_type("linear"), "m");
            }).find("needs equal ranks: adapter 'c' has r=3"),
            std::string::npos);
  auto ia3 = add_adapter(
      *model, json{{"peft_type", "IA3"}, {"target_modules", {"q_proj"}}, {"feedforward_modules", json::array()}},
      "ia3");
  EXPECT_NE(message_of([&] {
              merge_lora_adapters(*model, {a, ia3}, LoraMergeOptions({1, 1}), "m");
            }).find("adapter 'ia3' is IA3; only LORA adapters merge"),
            std::string::npos);
  // cat and svd accept different ranks.
  auto m = merge_lora_adapters(*model, {a, c}, LoraMergeOptions({1, 1}).combination_type("cat"), "m");
  EXPECT_EQ(at(m, kQ)->lora_A.size(0), 5);
}
