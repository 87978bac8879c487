// Mixed batches of every module type: one forward whose rows use different LoRA, (IA)³,
// bottleneck, prompt or prefix modules (or none), each row equal to that row run alone
// with its own module (saved, then loaded onto a fresh model).
#include "modula/backbone/registry.h"
#include "modula/composition/input_bank.h"
#include "modula/composition/ia3_bank.h"
#include "modula/composition/mixed.h"
#include "modula/composition/modular_linear.h"
#include "modula/composition/registry.h"
#include "support/temp_dir.h"

#include <gtest/gtest.h>

using namespace modula;
using modula::testing::fixture;
using modula::testing::TempDir;
using json = nlohmann::json;

namespace {

std::shared_ptr<Backbone> model_of(const std::string& name) { return load_backbone(fixture("hf/models/" + name)); }

BackboneInput batch(int64_t rows, int64_t T = 7) {
  BackboneInput in;
  in.input_ids = torch::arange(5, 5 + rows * T, torch::kInt64).remainder(97).add(3).view({rows, T});
  in.attention_mask = torch::ones({rows, T}, torch::kInt64);
  in.attention_mask[0][0] = 0;  // left padding on rows 0 and 2
  if (rows > 2) in.attention_mask[2].slice(0, 0, 2).zero_();
  return in;
}

BackboneInput row(const BackboneInput& in, int64_t n) {
  BackboneInput r;
  r.input_ids = in.input_ids.slice(0, n, n + 1);
  r.attention_mask = in.attention_mask.slice(0, n, n + 1);
  return r;
}

// Module sets (name, config) with non-trivial random parameters, saved to folders.
struct Sets {
  TempDir dir;
  std::vector<std::pair<std::string, std::string>> named_dirs;
};

Sets make_sets(const std::string& model, const std::vector<std::pair<std::string, json>>& configs) {
  Sets s;
  torch::manual_seed(11);
  for (const auto& [name, config] : configs) {
    auto m = model_of(model);
    auto a = add_adapter(*m, config, name);
    {
      torch::NoGradGuard g;
      for (auto& p : a.parameters()) p.add_(torch::randn_like(p) * 0.2);
    }
    auto path = s.dir / name;
    save_adapter(a, path);
    s.named_dirs.emplace_back(name, path);
  }
  return s;
}

// The last T positions of logits [1|B, S, V] (prompt rows carry their virtual slots first).
torch::Tensor last(const torch::Tensor& logits, int64_t T) { return logits.slice(1, logits.size(1) - T, logits.size(1)); }

// One forward over rows routed to `per_row`; every row must equal that row alone.
void expect_each_row_alone(const std::string& model, const Sets& sets, const std::vector<std::string>& per_row) {
  auto m = model_of(model);
  auto mixed = load_mixed(*m, sets.named_dirs);
  set_row_modules(mixed, per_row);
  const auto B = static_cast<int64_t>(per_row.size());
  auto in = batch(B);
  const auto T = in.input_ids.size(1);
  torch::NoGradGuard no_grad;
  auto got = last(forward_adapted(*m, mixed, in).logits, T);
  ASSERT_EQ(got.size(0), B);
  for (int64_t n = 0; n < B; ++n) {
    auto alone = model_of(model);
    torch::Tensor want;
    if (per_row[n] == kBaseAdapter) {
      want = alone->forward(row(in, n)).logits;
    } else {
      auto it = std::find_if(sets.named_dirs.begin(), sets.named_dirs.end(), [&](const auto& nd) { return nd.first == per_row[n]; });
      auto a = load_adapter(*alone, it->second, per_row[n]);
      want = forward_adapted(*alone, a, row(in, n)).logits;
    }
    auto keep = in.attention_mask[n].to(torch::kBool);
    auto diff = (got[n].index({keep}) - last(want, T)[0].index({keep})).abs().max().item<double>();
    EXPECT_LE(diff, 1e-5) << model << " row " << n << " (" << per_row[n] << ")";
    if (per_row[n] == kBaseAdapter) continue;  // the module changes its row: the comparison is not vacuous
    auto base = model_of(model)->forward(row(in, n)).logits;
    EXPECT_GT((got[n].index({keep}) - base[0].index({keep})).abs().max().item<double>(), 1e-3) << per_row[n];
  }
}

json lora() { return {{"peft_type", "LORA"}, {"r", 4}, {"lora_alpha", 8}, {"target_modules", "all-linear"}}; }
json ia3(const json& targets, const json& ff) {
  return {{"peft_type", "IA3"}, {"target_modules", targets}, {"feedforward_modules", ff}};
}
json bottleneck(const std::string& preset) { return {{"peft_type", "MODULA_BOTTLENECK"}, {"config", preset}}; }
json prompt(int n) { return {{"peft_type", "PROMPT_TUNING"}, {"num_virtual_tokens", n}}; }
json prefix(int n) { return {{"peft_type", "PREFIX_TUNING"}, {"num_virtual_tokens", n}}; }

}  // namespace

TEST(MixedBatch, LlamaLoraIa3BottleneckAndPromptsInOneForward) {
  auto sets = make_sets("llama", {{"lora", lora()},
                                  {"ia3", ia3({"k_proj", "v_proj", "down_proj"}, {"down_proj"})},
                                  {"adapter", bottleneck("pfeiffer")},
                                  {"p3", prompt(3)},
                                  {"p5", prompt(5)}});
  expect_each_row_alone("llama", sets, {"p5", "lora", "ia3", kBaseAdapter, "adapter", "p3", "lora"});
}

TEST(MixedBatch, Gpt2PrefixesOfDifferentLengthsWithIa3AndParallelAdapters) {
  auto sets = make_sets("gpt2", {{"x4", prefix(4)},
                                 {"x2", prefix(2)},
                                 {"ia3", ia3({"c_attn", "c_fc", "c_proj"}, {"c_fc"})},
                                 {"par", bottleneck("parallel")}});
  expect_each_row_alone("gpt2", sets, {"x2", "ia3", "x4", "par", kBaseAdapter});
}

TEST(MixedBatch, BertIa3HoulsbyAndLora) {
  auto sets = make_sets("bert", {{"ia3", ia3({"key", "value", "output.dense"}, json::array())},
                                 {"houlsby", bottleneck("houlsby")},
                                 {"lora", {{"peft_type", "LORA"}, {"r", 2}, {"target_modules", {"query", "value"}}}}});
  expect_each_row_alone("bert", sets, {"houlsby", "lora", "ia3", kBaseAdapter});
}

TEST(MixedBatch, Ia3BankRoutesPerRowInOneKernelAndTrainsOnlyUsedRows) {
  auto sets = make_sets("qwen2", {{"a", ia3({"q_proj", "up_proj", "down_proj"}, {"down_proj"})},
                                  {"b", ia3({"q_proj", "down_proj"}, {"down_proj"})},
                                  {"c", ia3({"up_proj"}, json::array())}});
  expect_each_row_alone("qwen2", sets, {"b", "a", "c", kBaseAdapter});
  auto m = model_of("qwen2");
  freeze_backbone(*m);
  auto mixed = load_mixed(*m, sets.named_dirs);
  set_row_modules(mixed, {"a", "a", "c"});
  m->train();
  m->forward(batch(3)).logits.pow(2).mean().backward();
  int banks = 0;
  for (const auto& s : mixed.modules) {
    auto layer = std::dynamic_pointer_cast<ModularLinearImpl>(s.module);
    ASSERT_TRUE(layer) << s.site;
    auto bank = dynamic_cast<Ia3BankImpl*>(&layer->bank());
    ASSERT_NE(bank, nullptr) << s.site;
    ++banks;
    for (auto* l : {&bank->l_out, &bank->l_in}) {
      auto g = l->grad();
      if (!g.defined()) continue;
      EXPECT_EQ(g[1].abs().sum().item<double>(), 0) << s.site;  // b is not in the batch
    }
  }
  EXPECT_GT(banks, 0);
}

TEST(MixedBatch, ErrorsNameTheSetAndModule) {
  auto m = model_of("llama");
  auto poly = add_adapter(*m, {{"peft_type", "POLY"}, {"r", 2}, {"n_tasks", 2}, {"target_modules", {"q_proj"}}}, "poly");
  auto l = add_adapter(*m, lora(), "l");
  try {
    mix_adapters({l, poly});
    FAIL() << "no exception";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("'poly' (POLY) at model.layers.0.self_attn.q_proj"), std::string::npos) << e.what();
  }
  for (const auto& p : m->named_parameters()) EXPECT_EQ(p.key().find(".adapters."), std::string::npos) << p.key();
  auto a = add_adapter(*m, lora(), "same");
  auto b = add_adapter(*m, ia3({"q_proj"}, json::array()), "__base__");
  EXPECT_THROW(mix_adapters({a, b}), std::invalid_argument);
}
