// Bottleneck adapters on block sites (Houlsby et al. 2019; Pfeiffer et al. 2021; He et al.
// 2022): block sites see the right x and y, identity at init, parameter counts, gradients
// only into adapters, save/load round trip, training, no merging, clear config errors.
#include <gtest/gtest.h>

#include "modula/backbone/registry.h"
#include "modula/composition/registry.h"
#include "modula/io/peft.h"
#include "modula/modules/adapter.h"
#include "modula/modules/bottleneck.h"
#include "modula/modules/lora.h"
#include "modula/modules/targets.h"
#include "support/temp_dir.h"

using modula::testing::fixture;
using modula::testing::TempDir;
using json = nlohmann::json;

namespace {

const std::vector<std::string> kFamilies = {"llama", "gpt2", "bert"};
const std::vector<std::string> kPresets = {"pfeiffer", "houlsby", "parallel"};

std::shared_ptr<modula::Backbone> load(const std::string& family) {
  return modula::load_backbone(fixture("hf/models/" + family));
}

modula::BackboneInput batch() {
  modula::BackboneInput in;
  in.input_ids = torch::arange(10, 34, torch::kInt64).view({2, 12});
  in.attention_mask = torch::ones({2, 12}, torch::kInt64);
  return in;
}

json config_for(const std::string& preset) {
  json c = {{"peft_type", "MODULA_BOTTLENECK"}, {"config", preset}};
  if (preset == "pfeiffer") c["reduction_factor"] = 8;
  if (preset == "houlsby") c["ln_before"] = true;  // also covers the LayerNorm tensors
  return c;                                        // parallel: the preset defaults (reduction_factor 2, scaling 4)
}

// HF paths of the block sites of layer i: {attention, feed-forward}.
std::pair<std::string, std::string> block_paths(const std::string& family, int64_t i) {
  const auto n = std::to_string(i);
  if (family == "llama") return {"model.layers." + n + ".self_attn", "model.layers." + n + ".mlp"};
  if (family == "gpt2") return {"transformer.h." + n + ".attn", "transformer.h." + n + ".mlp"};
  return {"bert.encoder.layer." + n + ".attention", "bert.encoder.layer." + n + ".output"};
}

// Language-model loss: next token for causal models, the token itself for masked LMs.
torch::Tensor lm_loss(const modula::Backbone& model, const torch::Tensor& logits, const torch::Tensor& ids) {
  const int64_t T = ids.size(1), shift = model.causal() ? 1 : 0;
  return torch::nn::functional::cross_entropy(logits.narrow(1, 0, T - shift).reshape({-1, logits.size(-1)}),
                                              ids.narrow(1, shift, T - shift).reshape({-1}));
}

void perturb(const modula::Adapter& a, double amount) {
  torch::NoGradGuard g;
  for (auto& p : a.parameters()) p.add_(torch::randn_like(p) * amount);
}

class EachCase : public ::testing::TestWithParam<std::tuple<std::string, std::string>> {
 protected:
  const std::string& family() { return std::get<0>(GetParam()); }
  const std::string& preset() { return std::get<1>(GetParam()); }
  json config() { return config_for(preset()); }
};

TEST_P(EachCase, StartsAsIdentity) {
  auto model = load(family());
  torch::NoGradGuard g;
  auto before = model->forward(batch()).logits;
  auto a = modula::add_adapter(*model, config());
  EXPECT_FALSE(a.modules.empty());
  EXPECT_LE((model->forward(batch()).logits - before).abs().max().item<double>(), 1e-6);
}

TEST_P(EachCase, TrainableCountEqualsFormula) {
  auto model = load(family());
  auto a = modula::add_adapter(*model, config());
  const auto& mc = model->config();
  const int64_t H = mc.hidden_size, L = mc.num_hidden_layers;
  const int64_t rf = preset() == "pfeiffer" ? 8 : preset() == "houlsby" ? 16 : 2;
  const int64_t m = H / rf, sites = L * (preset() == "houlsby" ? 2 : 1);
  const int64_t per_site = H * m + m + m * H + H + (preset() == "houlsby" ? 2 * H : 0);
  EXPECT_EQ(static_cast<int64_t>(a.modules.size()), sites);
  EXPECT_EQ(a.num_trainable(), sites * per_site);
}

TEST_P(EachCase, GradientsReachOnlyAdapterParameters) {
  auto model = load(family());
  auto a = modula::add_adapter(*model, config());
  modula::freeze_backbone(*model);
  perturb(a, 0.05);  // non-zero up-projections, so every adapter parameter gets a gradient
  auto in = batch();
  lm_loss(*model, model->forward(in).logits, in.input_ids).backward();
  for (auto& p : model->named_parameters()) {
    if (p.key().find(".adapters.") != std::string::npos) {
      ASSERT_TRUE(p.value().grad().defined()) << p.key();
      EXPECT_GT(p.value().grad().abs().sum().item<double>(), 0) << p.key();
    } else {
      EXPECT_FALSE(p.value().grad().defined()) << p.key();
    }
  }
}

TEST_P(EachCase, SaveLoadRoundTrip) {
  auto model = load(family());
  auto a = modula::add_adapter(*model, config());
  perturb(a, 0.05);
  TempDir dir;
  modula::save_adapter(a, dir.path);
  torch::NoGradGuard g;
  auto want = model->forward(batch()).logits;
  auto fresh = load(family());
  auto b = modula::load_adapter(*fresh, dir.path);
  EXPECT_LE((fresh->forward(batch()).logits - want).abs().max().item<double>(), 1e-6);
  EXPECT_EQ(b.num_trainable(), a.num_trainable());
}

TEST_P(EachCase, SavedTensorsAreKeyedByBlockPath) {
  auto model = load(family());
  auto a = modula::add_adapter(*model, config());
  TempDir dir;
  modula::save_adapter(a, dir.path);
  auto folder = modula::io::read_peft_folder(dir.path);
  EXPECT_EQ(folder.peft_type, "MODULA_BOTTLENECK");
  std::vector<std::string> suffixes = {"adapter_down.weight", "adapter_down.bias", "adapter_up.weight",
                                       "adapter_up.bias"};
  if (preset() == "houlsby")
    suffixes.insert(suffixes.end(), {"adapter_norm_before.weight", "adapter_norm_before.bias"});
  std::set<std::string> want;
  for (int64_t i = 0; i < model->config().num_hidden_layers; ++i) {
    auto [attn, ffn] = block_paths(family(), i);
    for (const auto& s : suffixes) {
      want.insert(std::string(modula::io::kPeftPrefix) + ffn + "." + s);
      if (preset() == "houlsby") want.insert(std::string(modula::io::kPeftPrefix) + attn + "." + s);
    }
  }
  std::set<std::string> got;
  for (const auto& kv : folder.tensors) got.insert(kv.first);
  EXPECT_EQ(got, want);
  const int64_t H = model->config().hidden_size;
  auto [attn, ffn] = block_paths(family(), 0);
  const int64_t m = H / (preset() == "pfeiffer" ? 8 : preset() == "houlsby" ? 16 : 2);
  EXPECT_EQ(folder.tensors.at(modula::io::kPeftPrefix + ffn + ".adapter_down.weight").sizes(),
            torch::IntArrayRef({m, H}));
  EXPECT_EQ(folder.tensors.at(modula::io::kPeftPrefix + ffn + ".adapter_up.weight").sizes(),
            torch::IntArrayRef({H, m}));
}

TEST_P(EachCase, TrainingLowersLoss) {
  torch::manual_seed(0);
  auto model = load(family());
  auto a = modula::add_adapter(*model, config());
  modula::freeze_backbone(*model);
  torch::optim::AdamW opt(a.parameters(), torch::optim::AdamWOptions(3e-2).weight_decay(0));
  auto in = batch();
  double first = 0, last = 0;
  for (int step = 0; step < 25; ++step) {
    opt.zero_grad();
    auto loss = lm_loss(*model, model->forward(in).logits, in.input_ids);
    loss.backward();
    opt.step();
    (step == 0 ? first : last) = loss.item<double>();
  }
  // Random tiny GPT-2 blocks output small y, so sequential adapters (reading y) learn slowest.
  EXPECT_LT(last, first * 0.98) << config().dump() << " first " << first << " last " << last;
}

TEST_P(EachCase, MergeThrows) {
  auto model = load(family());
  auto a = modula::add_adapter(*model, config());
  EXPECT_THROW(a.merge(), std::invalid_argument);
  auto linear = modula::linear_sites(*model).front().second;
  EXPECT_THROW(a.modules.front().module->merge(*linear), std::invalid_argument);
  a.unmerge();  // nothing merged: a no-op
  for (const auto& m : a.modules) EXPECT_FALSE(m.module->merged);
}

INSTANTIATE_TEST_SUITE_P(FamiliesAndPresets, EachCase,
                         ::testing::Combine(::testing::ValuesIn(kFamilies), ::testing::ValuesIn(kPresets)),
                         [](const auto& info) { return std::get<0>(info.param) + "_" + std::get<1>(info.param); });

// Records what a block site hands its modules.
class ProbeImpl : public modula::SiteModule {
 public:
  modula::SiteKind site_kind() const override { return modula::SiteKind::Block; }
  torch::Tensor transform_block(const torch::Tensor& x_in, const torch::Tensor& y_in) override {
    x = x_in.detach().clone();
    y = y_in.detach().clone();
    return y_in;
  }
  void merge(modula::LinearImpl&) override {}
  void unmerge(modula::LinearImpl&) override {}
  torch::Tensor x, y;
};

using Probes = std::map<std::string, std::shared_ptr<ProbeImpl>>;

Probes attach_probes(modula::Backbone& model) {
  Probes probes;
  for (auto& [path, site] : modula::block_sites(model)) {
    probes[path] = std::make_shared<ProbeImpl>();
    site->attach("probe", probes[path]);
  }
  return probes;
}

torch::Tensor param(modula::Backbone& model, const std::string& name) { return model.named_parameters()[name]; }

torch::Tensor rms_norm(const torch::Tensor& h, const torch::Tensor& w, double eps) {
  return w * h * torch::rsqrt(h.pow(2).mean(-1, true) + eps);
}

torch::Tensor layer_norm(modula::Backbone& model, const torch::Tensor& h, const std::string& prefix) {
  const auto& c = model.config();
  return torch::layer_norm(h, {c.hidden_size}, param(model, prefix + ".weight"), param(model, prefix + ".bias"),
                           c.norm_eps);
}

void expect_close(const torch::Tensor& got, const torch::Tensor& want, const std::string& what) {
  ASSERT_TRUE(got.defined()) << what;
  ASSERT_EQ(got.sizes(), want.sizes()) << what;
  EXPECT_LT((got - want).abs().max().item<double>(), 1e-5) << what;
}

// Pre-LN decoders: x = the pre-LN output, h ← h + y per block, final norm gives the output.
TEST(BlockSites, LlamaSitesSeeNormedInputAndBlockOutput) {
  auto model = load("llama");
  auto probes = attach_probes(*model);
  torch::NoGradGuard g;
  auto in = batch();
  auto out = model->forward(in);
  const double eps = model->config().norm_eps;
  auto h = model->embed_tokens(in.input_ids);
  for (int64_t i = 0; i < model->config().num_hidden_layers; ++i) {
    auto [attn, mlp] = block_paths("llama", i);
    const auto layer = "model.layers." + std::to_string(i);
    expect_close(probes[attn]->x, rms_norm(h, param(*model, layer + ".input_layernorm.weight"), eps), attn + " x");
    h = h + probes[attn]->y;
    expect_close(probes[mlp]->x, rms_norm(h, param(*model, layer + ".post_attention_layernorm.weight"), eps),
                 mlp + " x");
    h = h + probes[mlp]->y;
  }
  expect_close(rms_norm(h, param(*model, "model.norm.weight"), eps), out.last_hidden_state, "final hidden state");
}

TEST(BlockSites, Gpt2SitesSeeNormedInputAndBlockOutput) {
  auto model = load("gpt2");
  auto probes = attach_probes(*model);
  torch::NoGradGuard g;
  auto in = batch();
  auto out = model->forward(in);
  auto h = model->embed_tokens(in.input_ids) + param(*model, "transformer.wpe.weight").narrow(0, 0, 12);
  for (int64_t i = 0; i < model->config().num_hidden_layers; ++i) {
    auto [attn, mlp] = block_paths("gpt2", i);
    const auto block = "transformer.h." + std::to_string(i);
    expect_close(probes[attn]->x, layer_norm(*model, h, block + ".ln_1"), attn + " x");
    h = h + probes[attn]->y;
    expect_close(probes[mlp]->x, layer_norm(*model, h, block + ".ln_2"), mlp + " x");
    h = h + probes[mlp]->y;
  }
  expect_close(layer_norm(*model, h, "transformer.ln_f"), out.last_hidden_state, "final hidden state");
}

// Post-LN encoder: x = the sub-layer input, y before the residual add + LayerNorm.
TEST(BlockSites, BertSitesSeeSubLayerInputAndOutputBeforeResidual) {
  auto model = load("bert");
  auto probes = attach_probes(*model);
  torch::NoGradGuard g;
  auto in = batch();
  auto out = model->forward(in);
  auto h = model->embed_tokens(in.input_ids) +
           param(*model, "bert.embeddings.position_embeddings.weight").narrow(0, 0, 12) +
           param(*model, "bert.embeddings.token_type_embeddings.weight")[0];
  h = layer_norm(*model, h, "bert.embeddings.LayerNorm");
  for (int64_t i = 0; i < model->config().num_hidden_layers; ++i) {
    auto [attn, ffn] = block_paths("bert", i);
    expect_close(probes[attn]->x, h, attn + " x");
    auto a = layer_norm(*model, h + probes[attn]->y, attn + ".output.LayerNorm");
    expect_close(probes[ffn]->x, a, ffn + " x");
    h = layer_norm(*model, a + probes[ffn]->y, ffn + ".LayerNorm");
  }
  expect_close(h, out.last_hidden_state, "final hidden state");
}

TEST(BlockSites, NamesRolesAndUnchangedWeights) {
  for (const auto& family : kFamilies) {
    auto model = load(family);
    auto sites = modula::block_sites(*model);
    ASSERT_EQ(static_cast<int64_t>(sites.size()), 2 * model->config().num_hidden_layers) << family;
    for (size_t k = 0; k < sites.size(); ++k) {
      auto [attn, ffn] = block_paths(family, static_cast<int64_t>(k / 2));
      EXPECT_EQ(sites[k].first, k % 2 ? ffn : attn) << family;
      EXPECT_EQ(sites[k].second->role, k % 2 ? modula::BlockRole::FeedForward : modula::BlockRole::Attention);
      EXPECT_EQ(sites[k].second->features, model->config().hidden_size);
    }
    // Block sites add no parameters: the state dict still has only HF keys.
    for (const auto& [key, t] : modula::state_dict(*model)) EXPECT_EQ(key.find("adapters"), std::string::npos) << key;
  }
}

TEST(BlockSites, NothingAttachedCostsNothing) {
  modula::BlockSite site(modula::BlockRole::FeedForward, 8);
  auto x = torch::randn({2, 3, 8}), y = torch::randn({2, 3, 8});
  EXPECT_TRUE(site.adapt(x, y).is_same(y));
  auto b = modula::Bottleneck(modula::BottleneckOptions(8).reduction_factor(2));
  site.attach("b", b.ptr());
  b->enabled = false;
  EXPECT_TRUE(site.adapt(x, y).is_same(y));
  site.detach("b");
  EXPECT_FALSE(site.has_modules());
}

TEST(BlockSites, KindsMustMatch) {
  modula::BlockSite block(modula::BlockRole::Attention, 8);
  EXPECT_THROW(block.attach("lora", modula::Lora(modula::LoraOptions(8, 8)).ptr()), std::invalid_argument);
  modula::LinearImpl linear(modula::LinearOptions(8, 8));
  EXPECT_THROW(linear.attach("b", modula::Bottleneck(modula::BottleneckOptions(8).reduction_factor(2)).ptr()),
               std::invalid_argument);
}

// The formulas on a bare site: sequential y + s·f(y), parallel y + s·f(x), f = up(act(down(LN?(h)))).
TEST(Bottleneck, SequentialAndParallelFormulas) {
  torch::manual_seed(1);
  auto x = torch::randn({2, 5, 16}), y = torch::randn({2, 5, 16});
  for (const std::string mode : {"sequential", "parallel"}) {
    for (bool ln : {false, true}) {
      auto o =
          modula::BottleneckOptions(16).reduction_factor(4).non_linearity("tanh").mode(mode).ln_before(ln).scaling(2.5);
      auto b = modula::Bottleneck(o);
      {
        torch::NoGradGuard g;
        for (auto& p : b->parameters()) p.add_(torch::randn_like(p) * 0.3);
      }
      b->scale = 0.5;
      auto h = mode == "parallel" ? x : y;
      if (ln) h = torch::layer_norm(h, {16}, b->adapter_norm_before->weight, b->adapter_norm_before->bias, 1e-5);
      auto f = torch::nn::functional::linear(
          torch::tanh(torch::nn::functional::linear(h, b->adapter_down->weight, b->adapter_down->bias)),
          b->adapter_up->weight, b->adapter_up->bias);
      expect_close(b->transform_block(x, y), y + 1.25 * f, mode);
      b->options.residual(false);
      expect_close(b->transform_block(x, y), 1.25 * f, mode + " without residual");
    }
  }
}

TEST(Bottleneck, ScaleZeroAndDisabledAreTheBase) {
  auto model = load("llama");
  torch::NoGradGuard g;
  auto base = model->forward(batch()).logits;
  auto a = modula::add_adapter(*model, config_for("houlsby"));
  perturb(a, 0.1);
  EXPECT_GT((model->forward(batch()).logits - base).abs().max().item<double>(), 1e-4);
  a.set_scale(0.0);
  EXPECT_LE((model->forward(batch()).logits - base).abs().max().item<double>(), 1e-6);
  a.set_scale(1.0);
  a.set_enabled(false);
  EXPECT_LE((model->forward(batch()).logits - base).abs().max().item<double>(), 1e-6);
  a.set_enabled(true);
  modula::remove_adapter(a);
  EXPECT_LE((model->forward(batch()).logits - base).abs().max().item<double>(), 1e-6);
  for (auto& [path, site] : modula::block_sites(*model)) EXPECT_FALSE(site->has_modules()) << path;
}

TEST(Bottleneck, TargetOverrideAndLayersToTransform) {
  auto model = load("llama");
  auto a = modula::add_adapter(
      *model, {{"peft_type", "MODULA_BOTTLENECK"}, {"config", "pfeiffer"}, {"target_modules", {"self_attn"}}},
      "attn_only");
  ASSERT_EQ(a.modules.size(), 2u);
  EXPECT_EQ(a.modules[0].site, "model.layers.0.self_attn");
  EXPECT_EQ(a.modules[1].site, "model.layers.1.self_attn");
  auto b = modula::add_adapter(
      *model, {{"peft_type", "MODULA_BOTTLENECK"}, {"config", "houlsby"}, {"layers_to_transform", {1}}}, "last_layer");
  ASSERT_EQ(b.modules.size(), 2u);
  EXPECT_EQ(b.modules[0].site, "model.layers.1.self_attn");
  EXPECT_EQ(b.modules[1].site, "model.layers.1.mlp");
  // Two adapters stack on one site.
  auto site = modula::block_sites(*model)[2].second;
  EXPECT_EQ(site->module_names(), (std::vector<std::string>{"attn_only", "last_layer"}));
}

// Incremental decoding through the block sites equals the full forward.
TEST(Bottleneck, KVCacheDecodingEqualsFullForward) {
  auto model = load("llama");
  auto a = modula::add_adapter(*model, config_for("parallel"));
  perturb(a, 0.05);
  torch::NoGradGuard g;
  auto ids = batch().input_ids;
  modula::BackboneInput full;
  full.input_ids = ids;
  auto want = model->forward(full).logits;
  modula::KVCache cache;
  std::vector<torch::Tensor> steps;
  for (int64_t t = 0; t < 12; t += t == 0 ? 8 : 1) {
    modula::BackboneInput step;
    step.input_ids = ids.narrow(1, t, t == 0 ? 8 : 1);
    step.cache = &cache;
    steps.push_back(model->forward(step).logits);
  }
  EXPECT_LT((torch::cat(steps, 1) - want).abs().max().item<double>(), 1e-5);
}

void expect_invalid(const json& config, const std::string& needle) {
  auto model = load("llama");
  try {
    modula::add_adapter(*model, config);
    ADD_FAILURE() << "no error for " << config.dump();
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
  EXPECT_TRUE(modula::block_sites(*model).front().second->module_names().empty());
}

TEST(Bottleneck, ClearConfigErrors) {
  const json base = {{"peft_type", "MODULA_BOTTLENECK"}, {"config", "pfeiffer"}};
  auto with = [&](const char* key, const json& value) {
    json c = base;
    c[key] = value;
    return c;
  };
  expect_invalid(with("reduction_factor", 0), "reduction_factor");
  expect_invalid(with("reduction_factor", -4), "reduction_factor");
  expect_invalid(with("reduction_factor", 1000), "no bottleneck units");
  expect_invalid(with("config", "lora"), "unknown config 'lora'");
  expect_invalid(with("non_linearity", "softsign"), "unknown non_linearity 'softsign'");
  expect_invalid(with("reduction_factor", "sixteen"), "reduction_factor");
  expect_invalid(with("target_modules", json::array({"q_proj"})), "match no block site");
  expect_invalid({{"peft_type", "MODULA_BOTTLENECK"}}, "needs \"config\"");
  EXPECT_THROW(modula::BottleneckOptions(64).reduction_factor(0).validate(), std::invalid_argument);
  EXPECT_THROW(modula::BottleneckOptions(64).mode("serial").validate(), std::invalid_argument);
  EXPECT_THROW(modula::Bottleneck(modula::BottleneckOptions(64).non_linearity("gelu_new")), std::invalid_argument);
}

}  // namespace
