// TIES / DARE primitives against hand-worked examples on tiny tensors.
#include <gtest/gtest.h>

#include "modula/merge/task_vectors.h"

using namespace modula;

namespace {
torch::Tensor T(std::vector<float> v, std::vector<int64_t> shape) { return torch::tensor(v).view(shape); }
void expect_eq(const torch::Tensor& got, const torch::Tensor& want) {
  ASSERT_EQ(got.sizes(), want.sizes());
  EXPECT_TRUE(torch::allclose(got, want, 1e-6, 1e-6)) << got << "\nwant\n" << want;
}
}  // namespace

// τ_0 = [1, -3, 2, 0.5], τ_1 = [-4, 1, 0.1, 2]; density 0.5 keeps ⌊0.5·4⌋ = 2 per task:
// τ_0 keeps -3, 2; τ_1 keeps -4, 2.
TEST(TaskVectors, MagnitudePruneKeepsTopK) {
  auto tau = T({1, -3, 2, 0.5, -4, 1, 0.1, 2}, {2, 4});
  expect_eq(magnitude_prune(tau, 0.5), T({0, -3, 2, 0, -4, 0, 0, 2}, {2, 4}));
  expect_eq(magnitude_prune(tau, 1.0), tau);
  expect_eq(magnitude_prune(tau, 0.0), torch::zeros_like(tau));
  // One density per task: k = ⌊0.25·4⌋ = 1 and ⌊0.75·4⌋ = 3.
  expect_eq(magnitude_prune(tau, std::vector<double>{0.25, 0.75}), T({0, -3, 0, 0, -4, 1, 0, 2}, {2, 4}));
  // Trailing dims are flattened per task: [2, 2, 2] behaves as [2, 4].
  expect_eq(magnitude_prune(tau.view({2, 2, 2}), 0.5), T({0, -3, 2, 0, -4, 0, 0, 2}, {2, 2, 2}));
  EXPECT_THROW(magnitude_prune(tau, -0.1), std::invalid_argument);
}

// Column sums [-4, -3, 2, 2] elect signs [-, -, +, +]; zeros never agree.
TEST(TaskVectors, MajoritySignTotal) {
  auto kept = T({0, -3, 2, 0, -4, 0, 0, 2}, {2, 4});
  auto mask = majority_sign_mask(kept, SignMethod::Total);
  EXPECT_TRUE(torch::equal(mask, torch::tensor({0, 1, 1, 0, 1, 0, 0, 1}).view({2, 4}).to(torch::kBool)));
}

// One column [1, 1, -5]: total Σ = -3 elects "-", frequency Σ sgn = +1 elects "+".
TEST(TaskVectors, MajoritySignTotalVersusFrequency) {
  auto tau = T({1, 1, -5}, {3, 1});
  EXPECT_TRUE(
      torch::equal(majority_sign_mask(tau, SignMethod::Total), torch::tensor({false, false, true}).view({3, 1})));
  EXPECT_TRUE(
      torch::equal(majority_sign_mask(tau, SignMethod::Frequency), torch::tensor({true, true, false}).view({3, 1})));
  EXPECT_EQ(sign_method_from_string("sum"), SignMethod::Total);
  EXPECT_EQ(sign_method_from_string("count"), SignMethod::Frequency);
  EXPECT_THROW(sign_method_from_string("median"), std::invalid_argument);
}

// Columns: [2, 4] both agree -> mean 3; [1, -1] vote 0 elects "+" -> only 1 agrees -> 1.
TEST(TaskVectors, DisjointMergeIsTheMeanOverAgreeingTasks) {
  auto tau = T({2, 1, 4, -1}, {2, 2});
  auto mask = majority_sign_mask(tau, SignMethod::Total);
  expect_eq(disjoint_merge(tau, mask), torch::tensor({3.0f, 1.0f}));
  // Nothing agrees (all zero): divided by max(1, 0) = 1, stays 0.
  expect_eq(disjoint_merge(torch::zeros({2, 1}), torch::zeros({2, 1}, torch::kBool)), torch::zeros({1}));
}

TEST(TaskVectors, WeightedSum) {
  auto tau = T({1, 2, 3, 4}, {2, 2});
  expect_eq(weighted_sum(tau, torch::tensor({0.5, 2.0})), torch::tensor({6.5f, 9.0f}));  // [0.5+6, 1+8]
  EXPECT_THROW(weighted_sum(tau, torch::tensor({1.0})), std::invalid_argument);
}

// DARE: each kept entry is τ/p, the rest 0; the same seed gives the same mask.
TEST(TaskVectors, RandomPruneIsSeededAndRescaled) {
  auto tau = torch::full({2, 5000}, 3.0f);
  auto g1 = seeded_generator(7), g2 = seeded_generator(7), g3 = seeded_generator(8);
  auto a = random_prune(tau, 0.3, true, g1), b = random_prune(tau, 0.3, true, g2), c = random_prune(tau, 0.3, true, g3);
  EXPECT_TRUE(torch::equal(a, b));
  EXPECT_FALSE(torch::equal(a, c));
  auto kept = a != 0;
  EXPECT_TRUE(torch::allclose(a.masked_select(kept), torch::full({kept.sum().item<int64_t>()}, 10.0f)));  // 3 / 0.3
  double frac = kept.to(torch::kFloat64).mean().item<double>();
  EXPECT_NEAR(frac, 0.3, 0.02);  // 10000 draws: σ ≈ 0.0046
  auto g4 = seeded_generator(7);
  EXPECT_TRUE(torch::equal(random_prune(tau, 0.3, false, g4), a * 0.3f));  // no rescale: τ itself
  auto g5 = seeded_generator(1);
  EXPECT_TRUE(torch::equal(random_prune(tau, 1.0, true, g5), tau));
}

TEST(TaskVectors, RandomPrunePerTaskDensities) {
  auto tau = torch::ones({2, 4000});
  auto g = seeded_generator(3);
  auto out = random_prune(tau, std::vector<double>{0.25, 1.0}, true, g);
  EXPECT_TRUE(torch::equal(out[1], tau[1]));  // density 1 keeps the task whole
  EXPECT_NEAR((out[0] != 0).to(torch::kFloat64).mean().item<double>(), 0.25, 0.03);
  EXPECT_TRUE(torch::allclose(out[0].masked_select(out[0] != 0), torch::tensor(4.0f)));
}
