// Mixed-adapter batches: each row routed to its own LoRA adapter by name.
#include "modula/composition/registry.h"
#include "modula/backbone/registry.h"
#include "modula/composition/mixed.h"
#include "modula/composition/modular_linear.h"
#include "support/temp_dir.h"

#include <gtest/gtest.h>

using namespace modula;
using modula::testing::fixture;
using json = nlohmann::json;

namespace {

std::shared_ptr<Backbone> llama() { return load_backbone(fixture("hf/models/llama")); }

BackboneInput batch(int64_t rows) {
  BackboneInput in;
  in.input_ids = torch::arange(5, 5 + rows * 9, torch::kInt64).remainder(500).view({rows, 9});
  in.attention_mask = torch::ones({rows, 9}, torch::kInt64);
  in.attention_mask[0][0] = 0;  // left padding on row 0
  return in;
}

BackboneInput row(const BackboneInput& in, int64_t n) {
  BackboneInput r;
  r.input_ids = in.input_ids.slice(0, n, n + 1);
  r.attention_mask = in.attention_mask.slice(0, n, n + 1);
  return r;
}

std::vector<std::pair<std::string, std::string>> fixture_adapters() {
  std::vector<std::pair<std::string, std::string>> dirs;
  for (std::string n : {"a0", "a1", "a2"}) dirs.emplace_back(n, fixture("hf/adapters/llama-mixed/" + n));
  return dirs;
}

void expect_rows_close(const torch::Tensor& got, const torch::Tensor& want, const torch::Tensor& mask, int64_t n) {
  auto keep = mask.to(torch::kBool);
  EXPECT_TRUE(torch::allclose(got.index({keep}), want.index({keep}), 1e-4, 1e-5)) << "row " << n;
}

}  // namespace

TEST(MixedLora, EachRowEqualsRunningItAloneWithItsAdapter) {
  auto model = llama();
  auto mixed = load_mixed(*model, fixture_adapters());
  EXPECT_EQ(mixed.config["modules"], json({"a0", "a1", "a2"}));
  EXPECT_EQ(mixed.modules.size(), 14u);  // 7 projections x 2 layers
  std::vector<std::string> per_row = {"a2", "a0", kBaseAdapter, "a1"};
  set_row_modules(mixed, per_row);
  auto in = batch(4);
  torch::NoGradGuard no_grad;
  auto got = model->forward(in).logits;
  for (int64_t n = 0; n < 4; ++n) {
    auto alone = llama();
    if (per_row[n] != kBaseAdapter) load_adapter(*alone, fixture("hf/adapters/llama-mixed/" + per_row[n]));
    auto want = alone->forward(row(in, n)).logits;
    expect_rows_close(got.slice(0, n, n + 1), want, in.attention_mask.slice(0, n, n + 1), n);
  }
}

TEST(MixedLora, DifferentRanksAlphasAndTargets) {
  torch::manual_seed(0);
  auto model = llama();
  std::vector<json> configs = {
      {{"peft_type", "LORA"}, {"r", 2}, {"lora_alpha", 3}, {"target_modules", {"q_proj", "v_proj"}}},
      {{"peft_type", "LORA"}, {"r", 6}, {"lora_alpha", 4}, {"use_rslora", true}, {"target_modules", {"v_proj", "down_proj"}}},
      {{"peft_type", "LORA"}, {"r", 4}, {"lora_alpha", 8}, {"target_modules", {"q_proj"}}, {"rank_pattern", {{"q_proj", 1}}}},
  };
  std::vector<Adapter> adapters;
  for (size_t i = 0; i < configs.size(); ++i) {
    configs[i]["init_lora_weights"] = false;  // non-zero B
    adapters.push_back(add_adapter(*model, configs[i], "t" + std::to_string(i)));
  }
  auto in = batch(3);
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> want;
  for (size_t i = 0; i < adapters.size(); ++i) {
    for (size_t j = 0; j < adapters.size(); ++j) adapters[j].set_enabled(i == j);
    want.push_back(model->forward(in).logits);
  }
  auto mixed = mix_adapters(adapters);
  EXPECT_EQ(mixed.modules.size(), 6u);  // q, v, down in 2 layers
  set_row_modules(mixed, {"t1", "t2", "t0"});
  auto got = model->forward(in).logits;
  std::vector<int64_t> which = {1, 2, 0};
  for (int64_t n = 0; n < 3; ++n)
    expect_rows_close(got[n], want[which[n]][n], in.attention_mask[n], n);
  mixed.remove();
  for (const auto& p : model->named_parameters()) EXPECT_EQ(p.key().find(".adapters."), std::string::npos) << p.key();
}

TEST(MixedLora, TrainingAMultiTaskBatchUpdatesOnlyTheRoutedAdapters) {
  auto model = llama();
  freeze_backbone(*model);
  auto mixed = load_mixed(*model, fixture_adapters());
  set_row_modules(mixed, {"a2", "a0", "a2"});
  model->train();
  model->forward(batch(3)).logits.pow(2).mean().backward();
  for (const auto& s : mixed.modules) {
    auto bank = std::dynamic_pointer_cast<ModularLinearImpl>(s.module)->lora_bank();
    auto g = bank->lora_B.grad();
    ASSERT_TRUE(g.defined()) << s.site;
    EXPECT_GT(g[0].abs().sum().item<double>(), 0) << s.site;
    EXPECT_GT(g[2].abs().sum().item<double>(), 0) << s.site;
    EXPECT_EQ(g[1].abs().sum().item<double>(), 0) << s.site;  // a1 is not in the batch
  }
  for (const auto& p : model->named_parameters())
    if (p.key().find(".adapters.") == std::string::npos) EXPECT_FALSE(p.value().grad().defined()) << p.key();
}

TEST(MixedLora, ErrorsAreClear) {
  auto model = llama();
  auto mixed = load_mixed(*model, fixture_adapters());
  try {
    set_row_modules(mixed, {"a0", "nope"});
    FAIL() << "no exception";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("unknown module set name 'nope' (known: __base__, [\"a0\",\"a1\",\"a2\"])"), std::string::npos) << e.what();
  }
  set_row_modules(mixed, {"a0", "a1"});
  try {
    model->forward(batch(3));
    FAIL() << "no exception";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("'adapter' has 2 ids for a batch of 3 rows"), std::string::npos) << e.what();
  }
  mixed.remove();
  auto dora = add_adapter(*model, {{"peft_type", "LORA"}, {"r", 2}, {"use_dora", true}, {"target_modules", {"q_proj"}}}, "d");
  EXPECT_THROW(mix_adapters({dora}), std::invalid_argument);
  auto poly = add_adapter(*model, {{"peft_type", "POLY"}, {"r", 2}, {"n_tasks", 2}, {"target_modules", {"k_proj"}}}, "p");
  EXPECT_THROW(mix_adapters({poly}), std::invalid_argument);
  EXPECT_THROW(load_mixed(*model, {{"x", fixture("hf/adapters/llama-mixed/missing")}}), std::exception);
  for (const auto& p : model->named_parameters()) EXPECT_EQ(p.key().find(".adapters."), std::string::npos) << p.key();
}
