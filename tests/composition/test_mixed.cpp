// Mixed batches of every module type: one forward whose rows use different LoRA, (IA)³,
// bottleneck, prompt or prefix modules (or none), each row equal to that row run alone
// with its own module (saved, then loaded onto a fresh model).
#include <gtest/gtest.h>

#include "modula/aggregation/routed.h"
#include "modula/backbone/registry.h"
#include "modula/composition/ia3_bank.h"
#include "modula/composition/input_bank.h"
#include "modula/composition/mixed.h"
#include "modula/composition/modular_linear.h"
#include "modula/composition/registry.h"
#include "modula/modules/bottleneck.h"
#include "support/temp_dir.h"

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

std::shared_ptr<Backbone> llama() { return model_of("llama"); }

// The PEFT mixed-batch fixture's three LoRA adapters (different ranks and targets).
std::vector<std::pair<std::string, std::string>> fixture_adapters() {
  std::vector<std::pair<std::string, std::string>> dirs;
  for (std::string n : {"a0", "a1", "a2"}) dirs.emplace_back(n, fixture("hf/adapters/llama-mixed/" + n));
  return dirs;
}

void expect_rows_close(const torch::Tensor& got, const torch::Tensor& want, const torch::Tensor& mask, int64_t n) {
  auto keep = mask.to(torch::kBool);
  EXPECT_TRUE(torch::allclose(got.index({keep}), want.index({keep}), 1e-4, 1e-5)) << "row " << n;
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
torch::Tensor last(const torch::Tensor& logits, int64_t T) {
  return logits.slice(1, logits.size(1) - T, logits.size(1));
}

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
      auto it = std::find_if(sets.named_dirs.begin(), sets.named_dirs.end(),
                             [&](const auto& nd) { return nd.first == per_row[n]; });
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

// A frozen `model` with the sets of `dirs` mixed, rows routed to `per_row`, after one training
// backward of a batch of those rows: the gradients show which modules the routing reached.
struct Trained {
  std::shared_ptr<Backbone> model;
  Adapter mixed;
};
Trained after_one_backward(const std::string& model, const std::vector<std::pair<std::string, std::string>>& dirs,
                           const std::vector<std::string>& per_row) {
  Trained t{model_of(model), {}};
  freeze_backbone(*t.model);
  t.mixed = load_mixed(*t.model, dirs);
  set_row_modules(t.mixed, per_row);
  t.model->train();
  t.model->forward(batch(static_cast<int64_t>(per_row.size()))).logits.pow(2).mean().backward();
  return t;
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

// Several bottleneck adapters of one shape at a block site run as gathered matmuls (each row
// reads its own adapter's weights, aggregation/bottleneck_batch.h); adapters of different
// kinds (relu pfeiffer, silu houlsby) run each on its own rows. Rows equal each row alone;
// training reaches only the routed adapters.
TEST(MixedBatch, BottleneckAdaptersPerRowGatheredAndTrainedOnlyWhereRouted) {
  auto sets = make_sets("llama", {{"b0", bottleneck("pfeiffer")},
                                  {"b1", bottleneck("pfeiffer")},
                                  {"b2", bottleneck("pfeiffer")},
                                  {"h", bottleneck("houlsby")}});
  expect_each_row_alone("llama", sets, {"b2", "b0", kBaseAdapter, "b1", "b2"});
  expect_each_row_alone("llama", sets, {"h", "b0", "b1", kBaseAdapter});
  std::vector<std::pair<std::string, std::string>> pfeiffer(sets.named_dirs.begin(), sets.named_dirs.begin() + 3);
  auto trained = after_one_backward("llama", pfeiffer, {"b2", "b0", "b2"});
  int sites = 0;
  for (const auto& s : trained.mixed.modules) {
    auto routed = std::dynamic_pointer_cast<RoutedImpl>(s.module);
    if (!routed) continue;
    ++sites;
    auto grad_of = [&](size_t c) {
      auto g = std::dynamic_pointer_cast<BottleneckImpl>(routed->children()[c])->adapter_up->weight.grad();
      return g.defined() ? g.abs().sum().item<double>() : 0.0;
    };
    EXPECT_GT(grad_of(0), 0) << s.site;
    EXPECT_EQ(grad_of(1), 0) << s.site;  // b1 is not in the batch
    EXPECT_GT(grad_of(2), 0) << s.site;
  }
  EXPECT_GT(sites, 0);
}

// One token per row (a decode step) takes the BGMV path of the bottleneck stack: each row
// equals that row alone; the kept stack follows an in-place update of one adapter.
// Adapters with a LayerNorm on their input (ln_before) batch too, each row its own γ, β.
json bottleneck_ln() {
  auto c = bottleneck("pfeiffer");
  c["ln_before"] = true;
  return c;
}

TEST(MixedBatch, BottleneckDecodeShapedRowsAndInPlaceUpdates) {
  auto ln_sets = make_sets("llama", {{"b0", bottleneck_ln()}, {"b1", bottleneck_ln()}});
  expect_each_row_alone("llama", ln_sets, {"b1", "b0", kBaseAdapter});
  auto sets =
      make_sets("llama", {{"b0", bottleneck("houlsby")}, {"b1", bottleneck("houlsby")}, {"b2", bottleneck("houlsby")}});
  const std::vector<std::string> per_row = {"b2", kBaseAdapter, "b0", "b1", "b0"};
  const auto B = static_cast<int64_t>(per_row.size());
  BackboneInput in;
  in.input_ids = torch::tensor({7, 19, 3, 42, 11}).view({B, 1});
  auto m = model_of("llama");
  auto mixed = load_mixed(*m, sets.named_dirs);
  set_row_modules(mixed, per_row);
  torch::NoGradGuard no_grad;
  auto alone = [&](int64_t n) {
    auto one = model_of("llama");
    BackboneInput r;
    r.input_ids = in.input_ids.slice(0, n, n + 1);
    if (per_row[n] == kBaseAdapter) return one->forward(r).logits;
    auto a = load_adapter(*one, sets.named_dirs[std::stoi(per_row[n].substr(1))].second, per_row[n]);
    return forward_adapted(*one, a, r).logits;
  };
  auto got = m->forward(in).logits;
  for (int64_t n = 0; n < B; ++n)
    EXPECT_LE((got[n] - alone(n)[0]).abs().max().item<double>(), 1e-5) << "row " << n << " " << per_row[n];
  {  // the same one-token rows over the LayerNorm adapters
    auto ln = model_of("llama");
    auto ln_mixed = load_mixed(*ln, ln_sets.named_dirs);
    set_row_modules(ln_mixed, {"b1", "b0", kBaseAdapter, "b0", "b1"});
    auto ln_got = ln->forward(in).logits;
    for (int64_t n : {0, 1}) {
      auto one = model_of("llama");
      BackboneInput r;
      r.input_ids = in.input_ids.slice(0, n, n + 1);
      auto a = load_adapter(*one, ln_sets.named_dirs[1 - n].second, n == 0 ? "b1" : "b0");
      EXPECT_LE((ln_got[n] - forward_adapted(*one, a, r).logits[0]).abs().max().item<double>(), 1e-5) << "ln row " << n;
    }
  }
  std::shared_ptr<BottleneckImpl> b0;
  for (const auto& s : mixed.modules)
    if (auto routed = std::dynamic_pointer_cast<RoutedImpl>(s.module))
      b0 = std::dynamic_pointer_cast<BottleneckImpl>(routed->children()[0]);
  ASSERT_TRUE(b0);
  b0->adapter_up->weight.mul_(3);  // the last block site's b0: rows 2 and 4 change, the others do not
  auto after = m->forward(in).logits;
  for (int64_t n = 0; n < B; ++n) {
    const double change = (after[n] - got[n]).abs().max().item<double>();
    if (per_row[n] == "b0")
      EXPECT_GT(change, 1e-4) << "row " << n << ": a stale stack";
    else
      EXPECT_EQ(change, 0) << "row " << n;
  }
}

TEST(MixedBatch, Ia3BankRoutesPerRowInOneKernelAndTrainsOnlyUsedRows) {
  auto sets = make_sets("qwen2", {{"a", ia3({"q_proj", "up_proj", "down_proj"}, {"down_proj"})},
                                  {"b", ia3({"q_proj", "down_proj"}, {"down_proj"})},
                                  {"c", ia3({"up_proj"}, json::array())}});
  expect_each_row_alone("qwen2", sets, {"b", "a", "c", kBaseAdapter});
  auto trained = after_one_backward("qwen2", sets.named_dirs, {"a", "a", "c"});
  int banks = 0;
  for (const auto& s : trained.mixed.modules) {
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
  auto poly =
      add_adapter(*m, {{"peft_type", "POLY"}, {"r", 2}, {"n_tasks", 2}, {"target_modules", {"q_proj"}}}, "poly");
  auto l = add_adapter(*m, lora(), "l");
  try {
    mix_adapters({l, poly});
    FAIL() << "no exception";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("'poly' (POLY) at model.layers.0.self_attn.q_proj"), std::string::npos)
        << e.what();
  }
  for (const auto& p : m->named_parameters()) EXPECT_EQ(p.key().find(".adapters."), std::string::npos) << p.key();
  auto a = add_adapter(*m, lora(), "same");
  auto b = add_adapter(*m, ia3({"q_proj"}, json::array()), "__base__");
  EXPECT_THROW(mix_adapters({a, b}), std::invalid_argument);
}

// ---- LoRA: ranks, alphas, targets, training (the PEFT adapter_names semantics) ----------

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
      {{"peft_type", "LORA"},
       {"r", 6},
       {"lora_alpha", 4},
       {"use_rslora", true},
       {"target_modules", {"v_proj", "down_proj"}}},
      {{"peft_type", "LORA"},
       {"r", 4},
       {"lora_alpha", 8},
       {"target_modules", {"q_proj"}},
       {"rank_pattern", {{"q_proj", 1}}}},
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
  for (int64_t n = 0; n < 3; ++n) expect_rows_close(got[n], want[which[n]][n], in.attention_mask[n], n);
  mixed.remove();
  for (const auto& p : model->named_parameters()) EXPECT_EQ(p.key().find(".adapters."), std::string::npos) << p.key();
}

TEST(MixedLora, TrainingAMultiTaskBatchUpdatesOnlyTheRoutedAdapters) {
  auto trained = after_one_backward("llama", fixture_adapters(), {"a2", "a0", "a2"});
  auto& model = trained.model;
  auto& mixed = trained.mixed;
  for (const auto& s : mixed.modules) {
    auto bank = std::dynamic_pointer_cast<ModularLinearImpl>(s.module)->lora_bank();
    auto g = bank->lora_B.grad();
    ASSERT_TRUE(g.defined()) << s.site;
    EXPECT_GT(g[0].abs().sum().item<double>(), 0) << s.site;
    EXPECT_GT(g[2].abs().sum().item<double>(), 0) << s.site;
    EXPECT_EQ(g[1].abs().sum().item<double>(), 0) << s.site;  // a1 is not in the batch
  }
  for (const auto& p : model->named_parameters())
    if (p.key().find(".adapters.") == std::string::npos) {
      EXPECT_FALSE(p.value().grad().defined()) << p.key();
    }
}

TEST(MixedLora, ErrorsAreClear) {
  auto model = llama();
  auto mixed = load_mixed(*model, fixture_adapters());
  try {
    set_row_modules(mixed, {"a0", "nope"});
    FAIL() << "no exception";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("unknown module set name 'nope' (known: __base__, [\"a0\",\"a1\",\"a2\"])"),
              std::string::npos)
        << e.what();
  }
  set_row_modules(mixed, {"a0", "a1"});
  try {
    model->forward(batch(3));
    FAIL() << "no exception";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("'adapter' has 2 ids for a batch of 3 rows"), std::string::npos) << e.what();
  }
  mixed.remove();
  auto dora =
      add_adapter(*model, {{"peft_type", "LORA"}, {"r", 2}, {"use_dora", true}, {"target_modules", {"q_proj"}}}, "d");
  EXPECT_THROW(mix_adapters({dora}), std::invalid_argument);
  auto poly =
      add_adapter(*model, {{"peft_type", "POLY"}, {"r", 2}, {"n_tasks", 2}, {"target_modules", {"k_proj"}}}, "p");
  EXPECT_THROW(mix_adapters({poly}), std::invalid_argument);
  EXPECT_THROW(load_mixed(*model, {{"x", fixture("hf/adapters/llama-mixed/missing")}}), std::exception);
  for (const auto& p : model->named_parameters()) EXPECT_EQ(p.key().find(".adapters."), std::string::npos) << p.key();
}

// store_banks_as: the served LoRA banks in bfloat16 — every bank converted, half the bytes,
// and each row equal to the float32 mixed batch with its adapter weights rounded to bf16 (a
// decode step: the BGMV kernel reading bf16; a prompt: the GEMMs per row). The rounding
// itself is not small on these random fixtures: the adapters move the logits by up to 4.1,
// the rounding by up to 0.05.
TEST(MixedLora, BanksStoredInBfloat16) {
  auto model = llama(), rounded_model = llama();
  auto mixed = load_mixed(*model, fixture_adapters()), rounded = load_mixed(*rounded_model, fixture_adapters());
  const std::vector<std::string> rows = {"a2", "a0", kBaseAdapter, "a1"};
  set_row_modules(mixed, rows);
  set_row_modules(rounded, rows);
  torch::NoGradGuard no_grad;
  for (auto& p : rounded.parameters()) p.copy_(p.to(torch::kBFloat16));
  BackboneInput prompt = batch(4), step;
  step.input_ids = prompt.input_ids.slice(1, 0, 1);
  std::vector<torch::Tensor> exact;
  for (const auto& in : {prompt, step}) exact.push_back(model->forward(in).logits);
  int64_t bytes32 = 0, bytes16 = 0;
  for (const auto& p : mixed.parameters()) bytes32 += static_cast<int64_t>(p.nbytes());
  store_banks_as(mixed, torch::kBFloat16);
  for (const auto& s : mixed.modules) {
    auto bank = std::dynamic_pointer_cast<ModularLinearImpl>(s.module)->lora_bank();
    EXPECT_EQ(bank->lora_A.scalar_type(), torch::kBFloat16) << s.site;
    EXPECT_EQ(bank->lora_B.scalar_type(), torch::kBFloat16) << s.site;
  }
  for (const auto& p : mixed.parameters()) bytes16 += static_cast<int64_t>(p.nbytes());
  EXPECT_EQ(2 * bytes16, bytes32);
  size_t k = 0;
  for (const auto& in : {prompt, step}) {
    auto got = model->forward(in).logits;
    EXPECT_TRUE(torch::allclose(got, rounded_model->forward(in).logits, 1e-4, 1e-5)) << "T " << in.input_ids.size(1);
    EXPECT_GT((got - exact[k++]).abs().max().item<double>(), 1e-4);  // the rounding shows
  }
  EXPECT_THROW(store_banks_as(mixed, torch::kInt64), std::invalid_argument);
  mixed.remove();
  auto plain = add_adapter(*model, lora(), "plain");
  EXPECT_THROW(store_banks_as(plain, torch::kBFloat16), std::invalid_argument);
}
