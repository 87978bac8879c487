// Computation functions as PEFT-style adapters: identity at init, parameter counts,
// gradients only into modules, save/load round trip, merge/unmerge, training.
#include <gtest/gtest.h>

#include <limits>

#include "modula/backbone/registry.h"
#include "modula/composition/registry.h"
#include "modula/io/peft.h"
#include "modula/modules/adapter.h"
#include "modula/modules/lora.h"
#include "modula/modules/targets.h"
#include "modula/util/fs.h"
#include "support/temp_dir.h"

using modula::testing::fixture;
using modula::testing::TempDir;
using json = nlohmann::json;

namespace {

std::shared_ptr<modula::Backbone> llama() { return modula::load_backbone(fixture("hf/models/llama")); }

modula::BackboneInput batch() {
  modula::BackboneInput in;
  in.input_ids = torch::arange(10, 34, torch::kInt64).view({2, 12});
  in.attention_mask = torch::ones({2, 12}, torch::kInt64);
  return in;
}

const std::vector<json>& configs() {
  static const std::vector<json> all = {
      {{"peft_type", "LORA"}, {"r", 4}, {"lora_alpha", 8}, {"target_modules", {"q_proj", "v_proj", "down_proj"}}},
      {{"peft_type", "LORA"}, {"r", 4}, {"lora_alpha", 8}, {"use_rslora", true}, {"target_modules", "all-linear"}},
      {{"peft_type", "LORA"},
       {"r", 2},
       {"lora_alpha", 4},
       {"use_dora", true},
       {"target_modules", {"q_proj", "k_proj"}}},
      {{"peft_type", "LORA"},
       {"r", 4},
       {"lora_alpha", 8},
       {"target_modules", {"q_proj", "down_proj"}},
       {"rank_pattern", {{"q_proj", 2}}},
       {"alpha_pattern", {{"down_proj", 3}}}},
      {{"peft_type", "IA3"},
       {"target_modules", {"k_proj", "v_proj", "down_proj"}},
       {"feedforward_modules", {"down_proj"}}},
      {{"peft_type", "PROMPT_TUNING"}, {"num_virtual_tokens", 5}, {"token_dim", 64}},
      {{"peft_type", "PREFIX_TUNING"},
       {"num_virtual_tokens", 3},
       {"num_layers", 2},
       {"num_attention_heads", 2},
       {"token_dim", 32}},
      {{"peft_type", "PREFIX_TUNING"},
       {"num_virtual_tokens", 3},
       {"num_layers", 2},
       {"num_attention_heads", 2},
       {"token_dim", 32},
       {"prefix_projection", true},
       {"encoder_hidden_size", 16}},
  };
  return all;
}

class EachModule : public ::testing::TestWithParam<size_t> {
 protected:
  const json& config() { return configs()[GetParam()]; }
};

// Logits at the real-token positions (prompt tuning prepends virtual ones).
torch::Tensor real_logits(const torch::Tensor& logits, int64_t T) { return logits.narrow(1, logits.size(1) - T, T); }

TEST_P(EachModule, SiteModulesStartAsIdentity) {
  auto model = llama();
  torch::NoGradGuard g;
  auto before = model->forward(batch()).logits;
  auto a = modula::add_adapter(*model, config());
  if (a.input) GTEST_SKIP() << "input composition changes the input by design";
  EXPECT_TRUE(torch::allclose(modula::forward_adapted(*model, a, batch()).logits, before, 1e-6, 1e-6));
}

int64_t expected_count(const json& c, modula::Backbone& model) {
  const auto& mc = model.config();
  const std::string type = c["peft_type"];
  if (type == "PROMPT_TUNING") return c["num_virtual_tokens"].get<int64_t>() * mc.hidden_size;
  if (type == "PREFIX_TUNING") {
    int64_t n = c["num_virtual_tokens"], td = c["token_dim"], full = mc.num_hidden_layers * 2 * td;
    if (!c.value("prefix_projection", false)) return n * full;
    int64_t h = c["encoder_hidden_size"];
    return n * td + (td * h + h) + (h * full + full);
  }
  int64_t total = 0;
  for (auto& [path, layer] : modula::linear_sites(model)) {
    if (!modula::matches_target(c["target_modules"], path)) continue;
    int64_t in = layer->options.in_features(), out = layer->options.out_features();
    if (type == "IA3") {
      total += modula::matches_target(c["feedforward_modules"], path) ? in : out;
      continue;
    }
    int64_t r = c["r"];
    const json ranks = c.value("rank_pattern", json::object());
    if (auto* rp = modula::pattern_value(ranks, path)) r = rp->get<int64_t>();
    total += r * (in + out) + (c.value("use_dora", false) ? out : 0);
  }
  return total;
}

TEST_P(EachModule, TrainableCountEqualsFormula) {
  auto model = llama();
  auto a = modula::add_adapter(*model, config());
  EXPECT_EQ(a.num_trainable(), expected_count(config(), *model));
  EXPECT_GT(a.num_trainable(), 0);
}

torch::Tensor lm_loss(const torch::Tensor& logits, const torch::Tensor& ids) {
  auto T = ids.size(1);
  auto l = real_logits(logits, T);
  return torch::nn::functional::cross_entropy(l.narrow(1, 0, T - 1).reshape({-1, l.size(-1)}),
                                              ids.narrow(1, 1, T - 1).reshape({-1}));
}

TEST_P(EachModule, GradientsReachOnlyModuleParameters) {
  auto model = llama();
  auto a = modula::add_adapter(*model, config());
  modula::freeze_backbone(*model);
  auto in = batch();
  // Non-zero module outputs, so every module parameter gets a gradient.
  {
    torch::NoGradGuard g;
    for (auto& p : a.parameters()) p.add_(torch::randn_like(p) * 0.01);
  }
  lm_loss(modula::forward_adapted(*model, a, in).logits, in.input_ids).backward();
  for (auto& p : model->named_parameters()) {
    bool is_module = p.key().find(".adapters.") != std::string::npos;
    if (is_module) {
      ASSERT_TRUE(p.value().grad().defined()) << p.key();
    } else {
      EXPECT_FALSE(p.value().grad().defined()) << p.key();
    }
  }
  for (auto& p : a.parameters()) {
    ASSERT_TRUE(p.grad().defined());
    EXPECT_GT(p.grad().abs().sum().item<double>(), 0);
  }
}

TEST_P(EachModule, SaveLoadRoundTrip) {
  auto model = llama();
  auto a = modula::add_adapter(*model, config());
  {
    torch::NoGradGuard g;
    for (auto& p : a.parameters()) p.add_(torch::randn_like(p) * 0.05);
  }
  TempDir dir;
  modula::save_adapter(a, dir.path);
  torch::NoGradGuard g;
  auto want = modula::forward_adapted(*model, a, batch()).logits;
  auto fresh = llama();
  auto b = modula::load_adapter(*fresh, dir.path);
  EXPECT_TRUE(torch::allclose(modula::forward_adapted(*fresh, b, batch()).logits, want, 1e-5, 1e-5));
}

TEST_P(EachModule, MergeThenUnmergeRestoresBase) {
  auto model = llama();
  auto a = modula::add_adapter(*model, config());
  if (a.input) {
    EXPECT_THROW(a.merge(), std::invalid_argument);
    return;
  }
  {
    torch::NoGradGuard g;
    for (auto& p : a.parameters()) p.add_(torch::randn_like(p) * 0.05);
  }
  std::map<std::string, torch::Tensor> base;
  for (auto& [k, v] : modula::state_dict(*model)) base[k] = v.clone();
  torch::NoGradGuard g;
  auto unmerged = modula::forward_adapted(*model, a, batch()).logits;
  a.merge();
  EXPECT_TRUE(torch::allclose(model->forward(batch()).logits, unmerged, 1e-4, 1e-4));
  a.unmerge();
  for (auto& [k, v] : modula::state_dict(*model)) EXPECT_LT((v - base[k]).abs().max().item<double>(), 1e-6) << k;
}

TEST_P(EachModule, TrainingLowersLoss) {
  auto model = llama();
  auto a = modula::add_adapter(*model, config());
  modula::freeze_backbone(*model);
  torch::optim::AdamW opt(a.parameters(), torch::optim::AdamWOptions(3e-2).weight_decay(0));
  auto in = batch();
  double first = 0, last = 0;
  for (int step = 0; step < 25; ++step) {
    opt.zero_grad();
    auto loss = lm_loss(modula::forward_adapted(*model, a, in).logits, in.input_ids);
    loss.backward();
    opt.step();
    (step == 0 ? first : last) = loss.item<double>();
  }
  EXPECT_LT(last, first * 0.95) << config().dump() << " first " << first << " last " << last;
}

INSTANTIATE_TEST_SUITE_P(Configs, EachModule, ::testing::Range<size_t>(0, 8));

TEST(Adapters, ClearErrors) {
  auto model = llama();
  EXPECT_THROW(modula::add_adapter(*model, {{"peft_type", "VERA"}, {"target_modules", {"q_proj"}}}),
               std::invalid_argument);
  try {
    modula::add_adapter(*model, {{"peft_type", "LORA"}, {"target_modules", {"query"}}});
    FAIL();
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("match no linear site"), std::string::npos) << e.what();
  }
  EXPECT_THROW(modula::add_adapter(*model, {{"peft_type", "LORA"}, {"r", 0}, {"target_modules", {"q_proj"}}}),
               std::invalid_argument);
  EXPECT_THROW(modula::add_adapter(*model, {{"peft_type", "LORA"}, {"r", "four"}, {"target_modules", {"q_proj"}}}),
               std::invalid_argument);
  // A file whose tensors do not fit the config.
  auto a = modula::add_adapter(*model, configs()[0], "x");
  TempDir dir;
  modula::save_adapter(a, dir.path);
  auto cfg = configs()[0];
  cfg["r"] = 8;
  modula::io::write_peft_folder(
      dir.path + "/bad", cfg,
      {{"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", torch::zeros({4, 64})}});
  auto fresh = llama();
  EXPECT_THROW(modula::load_adapter(*fresh, dir.path + "/bad"), std::invalid_argument);
  EXPECT_THROW(modula::load_adapter(*fresh, dir.path + "/missing"), std::runtime_error);
}

// NaN or infinite module weights (a corrupt download, a diverged run, an overflowed merge)
// are refused on read and on write, naming the file and the tensor.
TEST(Adapters, NonFiniteWeightsAreRefusedNamingTheTensor) {
  auto model = llama();
  auto a = modula::add_adapter(*model, configs()[0], "x");
  TempDir dir;
  modula::save_adapter(a, dir.path);
  auto folder = modula::io::read_peft_folder(dir.path);
  const std::string key = folder.tensors.begin()->first;
  for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()}) {
    modula::io::NamedTensors tensors;
    for (auto& [k, t] : folder.tensors) tensors.emplace_back(k, t.clone());
    tensors[0].second.view(-1)[0] = bad;
    try {
      modula::io::write_peft_folder(dir.path + "/bad", folder.config, tensors);
      FAIL() << "wrote a non-finite tensor";
    } catch (const std::runtime_error& e) {
      EXPECT_NE(std::string(e.what()).find("'" + key + "' holds NaN or infinite values"), std::string::npos)
          << e.what();
    }
    // Written behind the check's back (as another tool would), then read.
    modula::fs::make_dirs(dir.path + "/bad");
    modula::io::save_safetensors(dir.path + "/bad/adapter_model.safetensors", tensors);
    modula::fs::copy_file(dir.path + "/adapter_config.json", dir.path + "/bad/adapter_config.json");
    auto fresh = llama();
    try {
      modula::load_adapter(*fresh, dir.path + "/bad");
      FAIL() << "loaded a non-finite tensor";
    } catch (const std::runtime_error& e) {
      EXPECT_NE(std::string(e.what()).find("adapter_model.safetensors: tensor '" + key + "' holds NaN"),
                std::string::npos)
          << e.what();
    }
  }
}

// Configs that were truncated, overflowed to garbage, or failed with a message naming
// nothing (issue 14): each error now names the key and the value.
TEST(Adapters, ConfigValuesAreCheckedNamingKeyAndValue) {
  auto model = llama();
  auto error_with = [&](json changes) {
    json config = {{"peft_type", "LORA"}, {"r", 4}, {"lora_alpha", 8}, {"target_modules", {"q_proj"}}};
    config.update(changes);
    try {
      modula::add_adapter(*model, config);
    } catch (const std::invalid_argument& e) {
      return std::string(e.what());
    }
    return std::string("<accepted>");
  };
  auto has = [](const std::string& error, std::initializer_list<const char*> parts) {
    for (const char* p : parts)
      if (error.find(p) == std::string::npos) return ::testing::AssertionFailure() << "'" << p << "' not in: " << error;
    return ::testing::AssertionSuccess();
  };
  EXPECT_TRUE(has(error_with({{"r", 4.5}}), {"'r'", "4.5", "integer"}));  // was: r = 4
  EXPECT_TRUE(has(error_with({{"r", 1000000000}}), {"r 1000000000", "too large"}));
  EXPECT_TRUE(has(error_with({{"lora_alpha", 1e308}}), {"lora_alpha", "float range"}));
  EXPECT_TRUE(has(error_with({{"target_modules", "q_proj("}}), {"target_modules", "q_proj(", "regular expression"}));
  EXPECT_TRUE(has(error_with({{"target_modules", {1, 2}}}), {"target_modules", "list of strings", "[1,2]"}));
  EXPECT_TRUE(has(error_with({{"exclude_modules", "(k"}}), {"exclude_modules", "(k"}));
  EXPECT_TRUE(has(error_with({{"rank_pattern", {{"q_proj)", 2}}}}), {"rank_pattern", "q_proj)", "regular expression"}));
  EXPECT_TRUE(has(error_with({{"rank_pattern", {{"q_proj", 2.5}}}}), {"rank_pattern", "2.5", "integer"}));
  EXPECT_TRUE(has(error_with({{"alpha_pattern", {{"q_proj", 1e308}}}}), {"lora_alpha", "float range"}));
  EXPECT_EQ(error_with({{"r", 2.0}, {"rank_pattern", {{"q_proj", 3}}}}), "<accepted>");
}

TEST(Adapters, TwoAdaptersStackAndDetach) {
  auto model = llama();
  torch::NoGradGuard g;
  auto base = model->forward(batch()).logits;
  auto a = modula::add_adapter(*model, configs()[0], "a");
  auto b = modula::add_adapter(*model, configs()[4], "b");
  for (auto& p : a.parameters()) p.add_(0.05);
  for (auto& p : b.parameters()) p.mul_(1.1);
  EXPECT_FALSE(torch::allclose(model->forward(batch()).logits, base));
  modula::remove_adapter(a);
  modula::remove_adapter(b);
  EXPECT_TRUE(torch::allclose(model->forward(batch()).logits, base, 1e-6, 1e-6));
}

}  // namespace

namespace {

TEST(Adapters, MergedExportEqualsAdapterForward) {
  auto model = llama();
  auto a = modula::load_adapter(*model, fixture("hf/adapters/llama-lora-dora"));
  torch::NoGradGuard g;
  auto want = modula::forward_adapted(*model, a, batch()).logits;
  a.merge();
  TempDir dir;
  modula::save_backbone(*model, dir.path);
  auto exported = modula::load_backbone(dir.path);
  EXPECT_TRUE(torch::allclose(exported->forward(batch()).logits, want, 1e-4, 1e-4));
}

TEST(Adapters, ScaleZeroIsBaseAndScaleOneIsAdapter) {
  auto model = llama();
  torch::NoGradGuard g;
  auto base = model->forward(batch()).logits;
  for (const char* name : {"llama-lora", "llama-ia3"}) {
    auto a = modula::load_adapter(*model, fixture(std::string("hf/adapters/") + name));
    auto full = model->forward(batch()).logits;
    a.set_scale(0.0);
    EXPECT_TRUE(torch::allclose(model->forward(batch()).logits, base, 1e-5, 1e-5)) << name;
    a.set_scale(0.5);
    auto half = model->forward(batch()).logits;
    EXPECT_FALSE(torch::allclose(half, base, 1e-4, 1e-4)) << name;
    EXPECT_FALSE(torch::allclose(half, full, 1e-4, 1e-4)) << name;
    modula::remove_adapter(a);
  }
}

}  // namespace

namespace {

// Incremental decoding with prompt/prefix tuning (first step prepared, then the cache
// carries the virtual tokens) gives the logits of the full forward.
TEST(InputModules, KVCacheDecodingEqualsFullForward) {
  for (const char* name : {"llama-prompt", "llama-prefix", "gpt2-prefix", "qwen2-prompt"}) {
    std::string arch = std::string(name).substr(0, std::string(name).find('-'));
    auto model = modula::load_backbone(fixture("hf/models/" + arch));
    auto a = modula::load_adapter(*model, fixture(std::string("hf/adapters/") + name));
    torch::NoGradGuard g;
    auto ids = torch::randint(3, model->config().vocab_size, {2, 8}, torch::kInt64);
    modula::BackboneInput full;
    full.input_ids = ids;
    auto want = modula::forward_adapted(*model, a, full).logits;
    want = want.narrow(1, want.size(1) - 8, 8);
    modula::KVCache cache;
    std::vector<torch::Tensor> steps;
    for (int64_t t = 0; t < 8; t += t == 0 ? 5 : 1) {
      int64_t len = t == 0 ? 5 : 1;
      modula::BackboneInput step;
      step.input_ids = ids.narrow(1, t, len);
      step.cache = &cache;
      auto logits = modula::forward_adapted(*model, a, step).logits;
      steps.push_back(logits.narrow(1, logits.size(1) - len, len));
    }
    EXPECT_LT((torch::cat(steps, 1) - want).abs().max().item<double>(), 1e-5) << name;
  }
}

}  // namespace

// A LoRA on a few rows without autograd takes the fused CPU path (lora_add_rows): the same
// output as with autograd (two linears, scale, add), for 1..5 rows (5: the plain path),
// with a scale and an rsLoRA scaling, in eval mode with dropout configured.
TEST(Adapters, FusedLoraRowsEqualThePlainPath) {
  torch::manual_seed(5);
  modula::LinearImpl base(modula::LinearOptions(37, 23));
  modula::LoraImpl lora(modula::LoraOptions(37, 23).r(6).alpha(9).use_rslora(true).dropout(0.3));
  {
    torch::NoGradGuard no_grad;
    lora.lora_B.normal_();
  }
  lora.scale = 0.7;
  lora.eval();
  for (int64_t rows : {1, 2, 4, 5}) {
    auto x = torch::randn({rows, 1, 37});
    auto y = base.forward(x);
    auto plain = lora.transform_output(x, y, base).detach();  // autograd on: the plain path
    torch::NoGradGuard no_grad;
    auto fused = lora.transform_output(x, y, base);
    EXPECT_EQ(fused.sizes(), plain.sizes());
    EXPECT_TRUE(torch::allclose(fused, plain, 1e-5, 1e-6)) << rows << " rows";
    EXPECT_FALSE(torch::equal(fused, y)) << "the delta is not zero";
  }
}
