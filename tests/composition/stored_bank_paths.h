// A LoRA bank stored in another dtype (LoraBankImpl::store_as) against a float32 bank that
// holds the same rounded weights and one that holds the unrounded ones: every routing path
// (one module per row at T = 1 — the CPU decode kernel — and T = 4, 7 and 130 — the packed
// GEMMs per row, reading the stored weights, 130 in three token blocks —,
// the gathered bmm with autograd, two modules per row, soft mixing, SMEAR) equals the
// rounded bank, differs from the exact one, computes in the input's float32, and with
// autograd passes gradients to the input.
#pragma once

#include <gtest/gtest.h>

#include "modula/composition/lora_bank.h"

namespace modula::testing {

inline void expect_stored_bank_paths(LoraBankImpl& stored, LoraBankImpl& rounded, LoraBankImpl& exact) {
  const int64_t in = exact.in_features(), M = exact.num_modules();
  ASSERT_GE(M, 4);
  const std::vector<int64_t> ids = {3, -1, 0, 2, 3, 1};  // every module, a repeat, an id -1
  const auto N = static_cast<int64_t>(ids.size());
  auto idx = torch::tensor(ids).unsqueeze(1);
  auto w = torch::rand({N, 1}) + 0.5;
  auto idx2 = torch::stack({torch::tensor(ids), torch::tensor({0, 1, 2, 3, 0, 1})}, 1);
  auto w2 = torch::rand({N, 2});
  auto soft = torch::softmax(torch::randn({N, M}), -1);
  for (int64_t T : {1, 4, 7, 130})
    for (bool grad : {false, true}) {
      auto x = torch::randn({N, T, in}, torch::requires_grad(grad));
      torch::AutoGradMode mode(grad);
      auto same = [&](auto&& fn, const char* what) {
        auto y = fn(stored);
        EXPECT_EQ(y.scalar_type(), torch::kFloat32) << what;
        EXPECT_TRUE(torch::allclose(y, fn(rounded), 1e-5, 1e-5)) << what << " T " << T << " grad " << grad;
        EXPECT_FALSE(torch::allclose(y, fn(exact), 1e-6, 1e-7)) << what << ": not rounded?";
        if (grad) {
          EXPECT_TRUE(y.requires_grad()) << what << ": gradients reach the input";
        }
      };
      same([&](LoraBankImpl& b) { return b.selected({x, {}, nullptr}, idx, w); }, "one module per row");
      same([&](LoraBankImpl& b) { return b.selected({x, {}, nullptr}, idx2, w2); }, "two modules per row");
      same([&](LoraBankImpl& b) { return b.mixed({x, {}, nullptr}, soft); }, "soft mixing");
      same([&](LoraBankImpl& b) { return b.averaged({x, {}, nullptr}, soft); }, "SMEAR");
    }
}

}  // namespace modula::testing
