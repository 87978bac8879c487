// mergekit-style merge methods on one tensor, against hand-worked values.
#include <gtest/gtest.h>

#include <cmath>

#include "modula/merge/model_merge.h"
#include "modula/merge/task_vectors.h"

using namespace modula;

namespace {
torch::Tensor V(std::vector<float> v) { return torch::tensor(v); }
void expect_near(const torch::Tensor& got, const torch::Tensor& want, double tol = 1e-5) {
  ASSERT_EQ(got.sizes(), want.sizes());
  EXPECT_TRUE(torch::allclose(got, want, tol, tol)) << got << "\nwant\n" << want;
}
torch::Tensor merge(const ModelMergeOptions& o, const torch::Tensor& base, std::vector<MergeTerm> terms,
                    double t = 0.5) {
  auto gen = seeded_generator(0);
  return merge_tensor(o, base, terms, t, gen);
}
// θ_0 = 1, θ_1 = θ_0 + [1, -0.5, 0, 2], θ_2 = θ_0 + [-1, 1.5, 0, 0.5].
const auto kBase = V({1, 1, 1, 1});
const auto kA = V({2, 0.5, 1, 3});
const auto kB = V({0, 2.5, 1, 1.5});
}  // namespace

// (1·θ_1 + 3·θ_2) / 4 = ([2, 0.5, 1, 3] + [0, 7.5, 3, 4.5]) / 4.
TEST(ModelMerge, Linear) {
  auto o = ModelMergeOptions().method("linear");
  expect_near(merge(o, {}, {{kA, 1}, {kB, 3}}), V({0.5, 2.0, 1.0, 1.875}));
  expect_near(merge(o.normalize(false), {}, {{kA, 1}, {kB, 3}}), V({2, 8, 4, 7.5}));
  EXPECT_THROW(merge(ModelMergeOptions().method("linear"), {}, {{kA, 1}, {kB, -1}}), std::invalid_argument);  // Σw = 0
}

// θ_0 + λ Σ w τ: Σ w τ = 1·[1,-0.5,0,2] + 3·[-1,1.5,0,0.5] = [-2, 4, 0, 3.5]; λ = 0.5.
TEST(ModelMerge, TaskArithmetic) {
  auto o = ModelMergeOptions().method("task_arithmetic").lambda(0.5);
  expect_near(merge(o, kBase, {{kA, 1}, {kB, 3}}), V({0, 3, 1, 2.75}));
}

// Trim (density 0.5, k = 2): τ̂_1 = [1, 0, 0, 2], τ̂_2 = [-1, 1.5, 0, 0].
// Weighted (w = 2, 1): [2, 0, 0, 4], [-1, 1.5, 0, 0]; elected signs (Σ) all "+".
// Agreeing: col0 task 1 (w 2), col1 task 2 (w 1), col2 none, col3 task 1 (w 2).
// normalize: [2/2, 1.5/1, 0, 4/2] = [1, 1.5, 0, 2] -> θ = [2, 2.5, 1, 3];
// without: [2, 1.5, 0, 4] -> θ = [3, 2.5, 1, 5].
TEST(ModelMerge, Ties) {
  auto o = ModelMergeOptions().method("ties");
  expect_near(merge(o, kBase, {{kA, 2, 0.5}, {kB, 1, 0.5}}), V({2, 2.5, 1, 3}));
  expect_near(merge(o.normalize(false), kBase, {{kA, 2, 0.5}, {kB, 1, 0.5}}), V({3, 2.5, 1, 5}));
}

// Elected on the weighted vectors: w = (1, 3) makes col0's vote 1 - 3 = -2 elect "-",
// so only task 2 counts there: -3/3 = -1 -> θ_0 - 1 = 0. col1: only task 2 (1.5·3/3).
TEST(ModelMerge, TiesElectsOnWeightedVectors) {
  auto o = ModelMergeOptions().method("ties");
  expect_near(merge(o, kBase, {{kA, 1, 0.5}, {kB, 3, 0.5}}), V({0, 2.5, 1, 3}));
}

// density 1 keeps everything: dare_linear is task arithmetic, dare_ties is TIES without trim.
TEST(ModelMerge, DareWithDensityOneIsItsDeterministicCounterpart) {
  expect_near(merge(ModelMergeOptions().method("dare_linear"), kBase, {{kA, 1}, {kB, 3}}),
              merge(ModelMergeOptions().method("task_arithmetic"), kBase, {{kA, 1}, {kB, 3}}));
  // dare_ties, density 1, w = (1, 1): votes [0, 1, 0, 2.5] elect "+" everywhere; agreeing
  // means: col0 1 (task 1), col1 1.5 (task 2), col2 0, col3 (2 + 0.5)/2 -> normalize off:
  // sums [1, 1.5, 0, 2.5].
  expect_near(merge(ModelMergeOptions().method("dare_ties"), kBase, {{kA, 1}, {kB, 1}}), V({2, 2.5, 1, 3.5}));
}

TEST(ModelMerge, DareIsSeeded) {
  auto base = torch::zeros({1000});
  auto a = torch::ones({1000});
  auto o = ModelMergeOptions().method("dare_linear");
  auto g1 = seeded_generator(5), g2 = seeded_generator(5);
  auto x = merge_tensor(o, base, {{a, 1, 0.5}}, 0, g1), y = merge_tensor(o, base, {{a, 1, 0.5}}, 0, g2);
  EXPECT_TRUE(torch::equal(x, y));
  auto kept = x != 0;
  EXPECT_TRUE(torch::allclose(x.masked_select(kept), torch::tensor(2.0f)));  // 1 / 0.5
}

// θ_0 = [1, 0], θ_1 = [0, 1]: Ω = π/2, t = 0.5 -> sin(π/4) · (θ_0 + θ_1) = [√2/2, √2/2].
TEST(ModelMerge, Slerp) {
  auto o = ModelMergeOptions().method("slerp");
  float h = std::sqrt(2.0f) / 2;
  expect_near(merge(o, V({1, 0}), {{V({0, 1})}}, 0.5), V({h, h}));
  expect_near(merge(o, V({1, 0}), {{V({0, 1})}}, 0.0), V({1, 0}));
  expect_near(merge(o, V({1, 0}), {{V({0, 1})}}, 1.0), V({0, 1}));
  // Colinear: lerp, (1 - 0.25)·[1, 1] + 0.25·[2, 2].
  expect_near(merge(o, V({1, 1}), {{V({2, 2})}}, 0.25), V({1.25, 1.25}));
  EXPECT_THROW(merge(o, V({1, 0}), {{V({0, 1})}, {V({1, 1})}}), std::invalid_argument);  // one other model only
}

// τ_1 = [1, 0], τ_2 = [1, 1]: cos = 1/√2, N = 2: t = 2c / (1 + c) = 0.828427;
// θ = t · mean(θ_i) = t · [1, 0.5].
TEST(ModelMerge, ModelStock) {
  auto o = ModelMergeOptions().method("model_stock");
  double c = 1 / std::sqrt(2.0), t = 2 * c / (1 + c);
  expect_near(merge(o, V({0, 0}), {{V({1, 0})}, {V({1, 1})}}), V({float(t), float(t / 2)}));
  // Orthogonal task vectors: cos 0 -> t = 0 -> the base.
  expect_near(merge(o, V({0, 0}), {{V({1, 0})}, {V({0, 1})}}), V({0, 0}));
  // 2-D: flattened τ = [1,0,1,0], [0,1,1,0]: cos 0.5 -> t = 1 / 1.5; mean [[.5,.5],[1,0]].
  auto base = torch::zeros({2, 2});
  auto a = torch::tensor({1.0f, 0.0f, 1.0f, 0.0f}).view({2, 2}),
       b = torch::tensor({0.0f, 1.0f, 1.0f, 0.0f}).view({2, 2});
  expect_near(merge(o, base, {{a}, {b}}), torch::tensor({1.0f / 3, 1.0f / 3, 2.0f / 3, 0.0f}).view({2, 2}));
  // filter_wise: row 0 cos 0 -> t 0 -> [0, 0]; row 1 cos 1 -> t 1 -> mean [1, 0].
  expect_near(merge(ModelMergeOptions().method("model_stock").filter_wise(true), base, {{a}, {b}}),
              torch::tensor({0.0f, 0.0f, 1.0f, 0.0f}).view({2, 2}));
  EXPECT_THROW(merge(o, V({0, 0}), {{V({1, 0})}}), std::invalid_argument);  // needs two models
}

TEST(ModelMerge, BadInputsNameTheProblem) {
  auto o = ModelMergeOptions().method("ties");
  try {
    merge(o, kBase, {{kA, 1, 0.5}, {V({1, 2}), 1, 0.5}});
    FAIL();
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("model 1 has shape [2]"), std::string::npos) << e.what();
  }
  EXPECT_THROW(merge(o, {}, {{kA, 1, 0.5}}), std::invalid_argument);  // ties needs a base
  try {
    merge(ModelMergeOptions().method("soup"), kBase, {{kA}});
    FAIL();
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("merge_method 'soup' is not known"), std::string::npos) << e.what();
  }
  EXPECT_THROW(merge(ModelMergeOptions().method("ties").consensus("median"), kBase, {{kA}}), std::invalid_argument);
}
