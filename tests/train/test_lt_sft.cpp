// LT-SFT (modula/train/lt_sft.h) on a tiny causal-LM task: exactly K entries, lower loss,
// the backbone back at θ₀ with its flags; NaN/inf losses are clear errors that restore θ₀;
// options name the bad field.
#include <gtest/gtest.h>

#include <limits>

#include "modula/backbone/registry.h"
#include "modula/train/lt_sft.h"
#include "support/errors.h"
#include "support/sparse.h"
#include "support/temp_dir.h"

using modula::SparseDiffOptions;
using modula::testing::error_of;
using modula::testing::fixture;

using namespace modula::testing;  // llama, proj_options, batch, lm_loss, snapshot, max_diff

TEST(LtSft, LowersLossWithExactlyKEntries) {
  auto model = llama();
  auto base = snapshot(*model);
  torch::manual_seed(0);
  auto ids = torch::randint(0, 512, {4, 16}, torch::kInt64);
  const double before = [&] {
    torch::NoGradGuard g;
    return lm_loss(*model, ids).item<double>();
  }();
  auto options = proj_options(0.02);
  modula::LtSftReport report;
  auto diff = modula::lt_sft(
      *model, options, modula::LtSftOptions().full_steps(5).sparse_steps(10).lr(1e-2),
      [&] { return lm_loss(*model, ids); }, &report);
  EXPECT_EQ(report.full_losses.size(), 5u);
  EXPECT_EQ(report.sparse_losses.size(), 10u);
  EXPECT_EQ(max_diff(*model, base), 0.0);  // the backbone is back at θ₀
  for (auto& p : model->parameters()) {
    EXPECT_TRUE(p.requires_grad());  // flags as before
    EXPECT_FALSE(p.grad().defined());
  }
  int64_t total = 0;
  for (auto& [name, p] : modula::select_parameters(*model, options.target_parameters())) total += p.numel();
  EXPECT_EQ(diff->num_trainable(), options.num_entries(total));
  EXPECT_EQ(diff->num_trainable(), std::llround(0.02 * static_cast<double>(total)));
  diff->apply(*model);
  torch::NoGradGuard g;
  const double after = lm_loss(*model, ids).item<double>();
  EXPECT_LT(after, before);
  EXPECT_NEAR(after, report.sparse_losses.back(), 0.5);
}

TEST(LtSft, NonFiniteLossThrowsAndRestores) {
  auto model = llama();
  auto base = snapshot(*model);
  int calls = 0;
  auto msg = error_of<std::runtime_error>([&] {
    modula::lt_sft(*model, proj_options(), modula::LtSftOptions().full_steps(3).sparse_steps(3).lr(1e-2), [&] {
      auto loss = lm_loss(*model, batch().input_ids);
      return ++calls == 2 ? loss * std::numeric_limits<double>::quiet_NaN() : loss;
    });
  });
  EXPECT_NE(msg.find("[sparse_ft] LT-SFT phase 1"), std::string::npos) << msg;
  EXPECT_NE(msg.find("loss is NaN"), std::string::npos) << msg;
  EXPECT_EQ(max_diff(*model, base), 0.0);
  calls = 0;
  msg = error_of<std::runtime_error>([&] {
    modula::lt_sft(*model, proj_options(), modula::LtSftOptions().full_steps(1).sparse_steps(3).lr(1e-2), [&] {
      auto loss = lm_loss(*model, batch().input_ids);
      return ++calls == 3 ? loss + std::numeric_limits<double>::infinity() : loss;
    });
  });
  EXPECT_NE(msg.find("phase 2 (sparse fine-tuning) step 2: loss is infinite"), std::string::npos) << msg;
  EXPECT_EQ(max_diff(*model, base), 0.0);
  for (auto& p : model->parameters()) EXPECT_TRUE(p.is_leaf());
}

TEST(LtSft, BadOptionsNameTheField) {
  auto model = llama();
  auto step = [&] { return lm_loss(*model, batch().input_ids); };
  auto run = [&](modula::LtSftOptions o) {
    return error_of<std::invalid_argument>([&] { modula::lt_sft(*model, proj_options(), o, step); });
  };
  EXPECT_NE(run(modula::LtSftOptions().full_steps(0)).find("[sparse_ft] full_steps must be >= 1"), std::string::npos);
  EXPECT_NE(run(modula::LtSftOptions().lr(0)).find("lr must be > 0"), std::string::npos);
  EXPECT_NE(run(modula::LtSftOptions().max_grad_norm(-1)).find("max_grad_norm"), std::string::npos);
}

// SGD and Adam run through the same loop; clipping keeps every phase-1 update small.
TEST(LtSft, EveryOptimizerLowersTheLoss) {
  for (auto kind : {modula::SftOptimizer::SGD, modula::SftOptimizer::Adam, modula::SftOptimizer::AdamW}) {
    auto model = llama();
    auto ids = batch().input_ids;
    modula::LtSftReport report;
    auto o = modula::LtSftOptions().full_steps(4).sparse_steps(4).optimizer(kind).lr(
        kind == modula::SftOptimizer::SGD ? 0.5 : 1e-2);
    modula::lt_sft(
        *model, proj_options(0.05), o.max_grad_norm(1.0), [&] { return lm_loss(*model, ids); }, &report);
    ASSERT_EQ(report.full_losses.size(), 4u);
    EXPECT_LT(report.full_losses.back(), report.full_losses.front()) << static_cast<int>(kind);
    EXPECT_LT(report.sparse_losses.back(), report.sparse_losses.front()) << static_cast<int>(kind);
  }
}

// On CUDA in bf16: attach/refresh gives float32 gradients to the values, LT-SFT runs,
// and detach restores the bf16 weights exactly.
TEST(LtSft, AttachAndLtSftOnCuda_CUDA) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  modula::LoadOptions o;
  o.device = torch::kCUDA;
  o.dtype = torch::kBFloat16;
  auto model = modula::load_backbone(fixture("hf/models/llama"), o);
  auto base = snapshot(*model);
  auto ids = batch().input_ids.to(torch::kCUDA);
  auto diff = modula::lt_sft(*model, proj_options(0.02), modula::LtSftOptions().full_steps(2).sparse_steps(2).lr(1e-2),
                             [&] { return lm_loss(*model, ids).to(torch::kFloat32); });
  EXPECT_EQ(max_diff(*model, base), 0.0);
  EXPECT_TRUE(diff->values(diff->names().front()).is_cuda());
  EXPECT_EQ(diff->values(diff->names().front()).scalar_type(), torch::kFloat32);
  diff->attach(*model);
  lm_loss(*model, ids).backward();
  EXPECT_GT(diff->values(diff->names().front()).grad().abs().sum().item<double>(), 0.0);
  diff->detach();
  EXPECT_EQ(max_diff(*model, base), 0.0);
}
