// Registry matrix: MODULA_MOE_FFN (see registry_matrix.h). MoEfication and sparse upcycling
// as a module type: both train through `modula train`'s code path, save and reload to the
// same eval loss; MoEfication trains only the routers (router distillation, an aux loss
// the training loop collects); with every expert active it reloads to the dense logits;
// upcycling starts equal to the dense model; off = the dense FFNs; merge refuses; a
// corrupted or mismatched folder is a clear error naming the folder and key.
#include <fstream>

#include "composition/registry_matrix.h"
#include "modula/train/loop.h"

using namespace modula;
using namespace modula::testing::matrix;
using modula::testing::error_of;
using modula::testing::fixture;
using modula::testing::TempDir;
using json = nlohmann::json;

namespace {

BackboneInput batch() {
  BackboneInput in;
  in.input_ids = torch::arange(5, 29, torch::kLong).view({2, 12});
  in.attention_mask = torch::ones({2, 12}, torch::kLong);
  return in;
}

torch::Tensor logits(Backbone& model) {
  torch::NoGradGuard no_grad;
  model.eval();
  return model.forward(batch()).logits;
}

double max_diff(const torch::Tensor& a, const torch::Tensor& b) { return (a - b).abs().max().item<double>(); }

json moe(const std::string& init, int64_t experts, int64_t k) {
  return {{"peft_type", "MODULA_MOE_FFN"}, {"init", init}, {"num_experts", experts}, {"num_experts_per_tok", k}};
}

}  // namespace

TEST(RegistryMatrix, SparseUpcyclingTrainsSavesReloads) { train_save_reload("llama", moe("upcycle", 4, 2), 3e-3); }

TEST(RegistryMatrix, MoeficationWithExpertsTrainsSavesReloads) {
  auto c = moe("moefy", 4, 2);
  c["train_experts"] = true;
  train_save_reload("llama", c, 3e-3);
}

// MoEfication's default: the experts stay the dense neurons, only the routers train (by
// router distillation, an aux loss TrainLoop adds); the saved experts are the fresh ones.
TEST(MoeFfnModule, MoeficationTrainsOnlyTheRoutersByDistillation) {
  auto model = load_backbone(fixture("hf/models/llama"));
  auto a = build_module(*model, moe("moefy", 4, 2));
  EXPECT_EQ(a.config.at("train_experts"), false);
  const int64_t H = model->config().hidden_size, layers = model->config().num_hidden_layers;
  EXPECT_EQ(a.num_trainable(), layers * 4 * H);  // one gate W_g [E, H] per layer
  TempDir d;
  save_module(a, d / "fresh");
  auto experts_before = io::read_peft_folder(d / "fresh").tensors;

  train::LoopOptions o;
  o.total_steps = 12;
  train::TrainLoop loop({{a.parameters(), 1e-2}}, o, model.get());
  std::vector<double> aux;
  model->train();
  loop.run([&](int64_t) { return model->forward(batch()).logits.sum() * 0.0; },
           [&](const train::StepStats& s) { aux.push_back(s.aux_loss); });
  ASSERT_EQ(aux.size(), 12u);
  EXPECT_GT(aux.front(), 0.0);
  EXPECT_LT(aux.back(), aux.front()) << "router distillation loss did not fall";

  save_module(a, d / "trained");
  auto after = io::read_peft_folder(d / "trained").tensors;
  ASSERT_EQ(after.size(), experts_before.size());
  for (const auto& [key, t] : after) {
    const bool router = key.find(".router.") != std::string::npos;
    EXPECT_EQ(torch::equal(t, experts_before.at(key)), !router) << key;
  }
}

// MoEfication through `modula train` with its defaults: routers only (the LM loss does not
// reach an unweighted MoE's router, so only the aux loss trains), then reload.
TEST(MoeFfnModule, MoeficationRoutersOnlyThroughModulaTrain) {
  TempDir d;
  auto cfg = run_config(d, "llama", "a", {{{"name", "m"}, {"config", moe("moefy", 4, 2)}}}, 1e-2, 4);
  run(cfg);
  auto model = load_backbone(fixture("hf/models/llama"));
  auto fresh = build_module(*model, moe("moefy", 4, 2));
  TempDir f;
  save_module(fresh, f / "m");
  auto trained = io::read_peft_folder(d / "a/modules/m").tensors, built = io::read_peft_folder(f / "m").tensors;
  for (const auto& [key, t] : trained)
    EXPECT_EQ(torch::equal(t, built.at(key)), key.find(".router.") == std::string::npos) << key;
}

TEST(MoeFfnModule, AllExpertsActiveReloadsToTheDenseLogits) {
  for (std::string family : {"llama", "gpt2"}) {
    TempDir d;
    {
      auto model = load_backbone(fixture("hf/models/" + family));
      auto a = build_module(*model, moe("moefy", 4, 4));
      save_module(a, d / "moe");
    }
    auto model = load_backbone(fixture("hf/models/" + family));
    auto dense = logits(*model);
    auto a = load_module(*model, d / "moe");
    EXPECT_LT(max_diff(logits(*model), dense), 1e-5) << family;
    a.set_enabled(false);  // the dense FFNs again
    EXPECT_TRUE(torch::equal(logits(*model), dense)) << family;
    a.set_enabled(true);
    auto msg = error_of([&] { a.merge(); });
    EXPECT_NE(msg.find("MODULA_MOE_FFN modules cannot be merged"), std::string::npos) << msg;
    a.remove();
    EXPECT_TRUE(torch::equal(logits(*model), dense)) << family;
  }
}

TEST(MoeFfnModule, UpcycledAtInitEqualsTheDenseModel) {
  for (std::string family : {"llama", "gpt2"}) {
    auto model = load_backbone(fixture("hf/models/" + family));
    auto dense = logits(*model);
    auto a = build_module(*model, moe("upcycle", 4, 2));
    EXPECT_LT(max_diff(logits(*model), dense), 1e-5) << family;
    EXPECT_EQ(a.config.at("train_experts"), true);
    const auto& mc = model->config();  // E copies of (at least) an up and a down projection per layer
    EXPECT_GE(a.num_trainable(), mc.num_hidden_layers * 4 * 2 * mc.hidden_size * mc.intermediate_size);
  }
}

TEST(RegistryMatrix, MoeFromScratchTrainsSavesReloads) {
  auto c = moe("random", 4, 1);
  c["expert_size"] = 24;
  train_save_reload("llama", c, 3e-3);
}

// init random: E distinct experts of expert_size neurons, weights ~ N(0, init_std²) (not
// copies of the dense FFN, which it does not read), saved shapes [E, expert_size, H].
TEST(MoeFfnModule, FromScratchExpertsAreFreshAndSized) {
  auto model = load_backbone(fixture("hf/models/llama"));
  auto dense = logits(*model);
  torch::manual_seed(0);
  auto c = moe("random", 4, 2);
  c["expert_size"] = 40;
  c["init_std"] = 0.05;
  auto a = build_module(*model, c);
  EXPECT_EQ(a.config.at("train_experts"), true);
  EXPECT_EQ(a.config.at("expert_size"), 40);
  EXPECT_GT(max_diff(logits(*model), dense), 1e-3);  // the dense FFN no longer runs
  TempDir d;
  save_module(a, d / "scratch");
  const auto t = io::read_peft_folder(d / "scratch").tensors;
  const auto& up = t.at("base_model.model.model.layers.0.mlp.w_up");
  const int64_t H = model->config().hidden_size;
  EXPECT_EQ(up.sizes(), (std::vector<int64_t>{4, 40, H}));
  EXPECT_FALSE(torch::equal(up[0], up[1]));  // not copies
  EXPECT_NEAR(up.std().item<double>(), 0.05, 0.005);
  a.remove();
  EXPECT_TRUE(torch::equal(logits(*model), dense));
  auto reloaded = load_module(*model, d / "scratch");
  EXPECT_GT(max_diff(logits(*model), dense), 1e-3);
}

TEST(MoeFfnModule, ClearErrors) {
  auto model = load_backbone(fixture("hf/models/llama"));
  auto dense = logits(*model);
  auto build_error = [&](json c) { return error_of([&] { build_module(*model, c); }); };
  auto msg = build_error({{"peft_type", "MODULA_MOE_FFN"}, {"num_experts", 4}});
  EXPECT_NE(msg.find("'init' must be \"upcycle\", \"moefy\" or \"random\""), std::string::npos) << msg;
  auto sized = moe("upcycle", 4, 2);
  sized["expert_size"] = 32;
  msg = build_error(sized);
  EXPECT_NE(msg.find("'expert_size' applies to init: random only"), std::string::npos) << msg;
  auto negative = moe("random", 4, 2);
  negative["expert_size"] = -3;
  msg = build_error(negative);
  EXPECT_NE(msg.find("'expert_size' must be positive"), std::string::npos) << msg;
  negative["expert_size"] = 8;
  negative["init_std"] = 0;
  msg = build_error(negative);
  EXPECT_NE(msg.find("'init_std' must be a positive number"), std::string::npos) << msg;
  auto bad = moe("upcycle", 4, 2);
  bad["kmeans_iterations"] = 3;
  msg = build_error(bad);
  EXPECT_NE(msg.find("'kmeans_iterations' applies to init: moefy only"), std::string::npos) << msg;
  msg = build_error(moe("moefy", 3, 2));
  EXPECT_NE(msg.find("intermediate size 176 is not divisible by num_experts 3"), std::string::npos) << msg;
  msg = build_error(moe("upcycle", 4, 5));
  EXPECT_NE(msg.find("'num_experts_per_tok' must be in [1, num_experts = 4], got 5"), std::string::npos) << msg;
  EXPECT_TRUE(torch::equal(logits(*model), dense)) << "a failed build left modules attached";

  TempDir d;
  {
    auto a = build_module(*model, moe("moefy", 4, 2));
    save_module(a, d / "llama-moe");
    a.remove();
  }
  // Shapes of another model: qwen2's intermediate size 160 gives experts of 40, not 44.
  auto qwen = load_backbone(fixture("hf/models/qwen2"));
  auto qwen_dense = logits(*qwen);
  msg = error_of([&] { load_module(*qwen, d / "llama-moe"); });
  EXPECT_NE(msg.find(d / "llama-moe"), std::string::npos) << msg;
  EXPECT_NE(msg.find("'base_model.model.model.layers.0.mlp.w_up' has shape [4, 44, 64]"), std::string::npos) << msg;
  EXPECT_TRUE(torch::equal(logits(*qwen), qwen_dense)) << "a failed load left modules attached";
  // A GPT-2 folder on Llama: other sites (transformer.h.N.mlp), no w_gate.
  {
    auto gpt2 = load_backbone(fixture("hf/models/gpt2"));
    save_module(build_module(*gpt2, moe("upcycle", 2, 1)), d / "gpt2-moe");
  }
  msg = error_of([&] { load_module(*model, d / "gpt2-moe"); });
  EXPECT_NE(msg.find(d / "gpt2-moe"), std::string::npos) << msg;
  EXPECT_NE(msg.find("has no tensor 'base_model.model.model.layers.0.mlp.w_up'"), std::string::npos) << msg;
  // A truncated weights file.
  fs::make_dirs(d / "cut");
  fs::copy_file(d / "llama-moe/adapter_config.json", d / "cut/adapter_config.json");
  {
    std::ifstream in(d / "llama-moe/adapter_model.safetensors", std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::ofstream(d / "cut/adapter_model.safetensors", std::ios::binary) << bytes.substr(0, bytes.size() / 2);
  }
  msg = error_of([&] { load_module(*model, d / "cut"); });
  EXPECT_NE(msg.find(d / "cut/adapter_model.safetensors"), std::string::npos) << msg;
  // A bad value in the folder's config names the file.
  auto config = json::parse(std::ifstream(d / "llama-moe/adapter_config.json"));
  config["init"] = "distill";
  fs::make_dirs(d / "bad");
  fs::copy_file(d / "llama-moe/adapter_model.safetensors", d / "bad/adapter_model.safetensors");
  std::ofstream(d / "bad/adapter_config.json") << config.dump();
  msg = error_of([&] { load_module(*model, d / "bad"); });
  EXPECT_NE(msg.find(d / "bad/adapter_config.json: 'init' must be"), std::string::npos) << msg;
  EXPECT_TRUE(torch::equal(logits(*model), dense));
}
