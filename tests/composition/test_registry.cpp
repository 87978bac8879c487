// The module registry through `modula train`'s code path (a YAML config file read by
// load_train_config, then train::train): every module type, with the
// routing it carries, is built from a config, trained a few steps on a tiny model (the
// loss goes down), saved, reloaded from its folder by the same code path, and evaluates
// to the same loss (the eval loss is the mean token cross-entropy of the logits, so equal
// losses to 1e-5 mean the reloaded modules give the trained logits).
#include <gtest/gtest.h>

#include <fstream>

#include "modula/backbone/registry.h"
#include "modula/composition/registry.h"
#include "modula/train/trainer.h"
#include "modula/util/fs.h"
#include "support/errors.h"
#include "train/tiny.h"

using namespace modula;
using namespace modula::train;
using modula::testing::fixture;
using modula::testing::TempDir;
using json = nlohmann::json;

namespace {

Datasets qa_data() {
  Datasets data;
  for (int i = 0; i < 16; ++i)
    data["qa"].train.push_back(
        {{"prompt", i % 2 ? "alice lives in" : "bob lives in"}, {"completion", i % 2 ? "paris" : "london"}});
  data["qa"].eval = data["qa"].train;
  return data;
}

json run_config(const TempDir& dir, const std::string& model, const std::string& out, const json& modules, double lr,
                int64_t steps) {
  return {
      {"model", fixture("hf/models/" + model)},
      {"tokenizer", modula::testing::write_tiny_tokenizer(dir / "tokenizer.json", false)},
      {"output", dir / out},
      {"seed", 5},
      {"tasks", {{{"name", "qa"}, {"type", "causal_lm"}}}},
      {"optim", {{"lr", lr}, {"max_steps", steps}, {"batch_size", 4}, {"schedule", "constant"}, {"warmup_steps", 0}}},
      {"modules", modules}};
}

struct Run {
  double first = 0, last = 0, eval_loss = 0;
};

Run run(const json& cfg) {
  std::vector<double> losses;
  Callbacks cb;
  cb.on_step = [&](const StepInfo& s) { losses.push_back(s.loss); };
  // Through the YAML reader, as `modula train run.yaml` does (JSON flow style is YAML).
  const auto path = cfg.at("output").get<std::string>() + ".yaml";
  std::ofstream(path) << cfg.dump(2);
  auto r = train::train(load_train_config(path), qa_data(), cb);
  Run out;
  out.eval_loss = r.eval.at("qa").at("loss");
  if (losses.size() >= 6) {
    for (size_t i = 0; i < 3; ++i) out.first += losses[i] / 3, out.last += losses[losses.size() - 1 - i] / 3;
  }
  return out;
}

// Trains `config` as module "m" (after `before`, e.g. fusion members), checks the loss went
// down, then reloads every trained module from its folder (lr 1e-12, one step: the run only
// evaluates) and checks the eval loss is the same.
void train_save_reload(const std::string& model, const json& config, double lr = 3e-2, json before = json::array()) {
  TempDir d;
  json modules = before;
  modules.push_back({{"name", "m"}, {"config", config}});
  auto trained = run(run_config(d, model, "a", modules, lr, 24));
  EXPECT_LT(trained.last, trained.first) << config.dump() << ": loss did not go down";
  json reload = json::array();
  for (const auto& m : modules) {
    auto name = m.at("name").get<std::string>();
    auto dir = m.contains("path") ? m.at("path").get<std::string>() : d / ("a/modules/" + name);
    ASSERT_TRUE(fs::is_file(fs::join(dir, "adapter_config.json"))) << dir;
    reload.push_back({{"name", name}, {"path", dir}, {"trainable", false}});
  }
  // The reloaded modules are frozen; a probe LoRA with B = 0 (identity, moved ~1e-12 by one
  // step) gives the run something to train.
  reload.push_back({{"name", "probe"}, {"config", {{"peft_type", "LORA"}, {"r", 1}, {"target_modules", {"q_proj"}}}}});
  auto again = run(run_config(d, model, "b", reload, 1e-12, 1));
  EXPECT_NEAR(again.eval_loss, trained.eval_loss, 1e-5 * std::max(1.0, std::abs(trained.eval_loss))) << config.dump();
}

const json kAllLinear = "all-linear";

}  // namespace

TEST(RegistryMatrix, ListsEveryTypeOnce) {
  std::vector<std::string> want = {"LORA",
                                   "IA3",
                                   "PROMPT_TUNING",
                                   "PREFIX_TUNING",
                                   "POLY",
                                   "MODULA_BOTTLENECK",
                                   "MODULA_SPARSE_FT",
                                   "MODULA_BITFIT",
                                   "MODULA_HYPER_LORA",
                                   "MODULA_FUSION",
                                   "MODULA_MOE_LORA"};
  EXPECT_EQ(supported_peft_types(), want);
  auto msg = modula::testing::error_of([] { module_type("LOHA"); });
  EXPECT_NE(msg.find("unknown peft_type 'LOHA' (supported: LORA, IA3"), std::string::npos) << msg;
}

TEST(RegistryMatrix, Lora) {
  train_save_reload("llama", {{"peft_type", "LORA"}, {"r", 4}, {"lora_alpha", 8}, {"target_modules", kAllLinear}});
}
TEST(RegistryMatrix, LoraDoraRslora) {
  train_save_reload("llama", {{"peft_type", "LORA"},
                              {"r", 4},
                              {"use_dora", true},
                              {"use_rslora", true},
                              {"target_modules", {"q_proj", "v_proj"}}});
}
TEST(RegistryMatrix, Ia3) {
  train_save_reload("llama",
                    {{"peft_type", "IA3"},
                     {"target_modules", {"k_proj", "v_proj", "down_proj"}},
                     {"feedforward_modules", {"down_proj"}}},
                    1e-1);
}
TEST(RegistryMatrix, PromptTuning) {
  train_save_reload("llama", {{"peft_type", "PROMPT_TUNING"}, {"num_virtual_tokens", 4}}, 1e-1);
}
TEST(RegistryMatrix, PrefixTuning) {
  train_save_reload("qwen2", {{"peft_type", "PREFIX_TUNING"}, {"num_virtual_tokens", 4}}, 1e-1);
}
TEST(RegistryMatrix, PolytroponRoutedByTask) {
  train_save_reload("llama",
                    {{"peft_type", "POLY"}, {"r", 2}, {"n_tasks", 2}, {"n_skills", 4}, {"target_modules", kAllLinear}});
}
TEST(RegistryMatrix, MultiHeadRoutingMhr) {
  train_save_reload("llama", {{"peft_type", "POLY"},
                              {"r", 2},
                              {"n_tasks", 1},
                              {"n_skills", 2},
                              {"n_splits", 2},
                              {"target_modules", kAllLinear}});
}
TEST(RegistryMatrix, BottleneckAdapter) {
  train_save_reload("llama", {{"peft_type", "MODULA_BOTTLENECK"}, {"config", "pfeiffer"}});
}
TEST(RegistryMatrix, SparseFineTuning) {
  train_save_reload("llama",
                    {{"peft_type", "MODULA_SPARSE_FT"}, {"target_parameters", {"re:.*mlp.*weight"}}, {"k", 512}}, 1e-2);
}
TEST(RegistryMatrix, BitFit) { train_save_reload("qwen2", {{"peft_type", "MODULA_BITFIT"}}, 1e-2); }  // q/k/v biases
TEST(RegistryMatrix, HypernetworkConditionedOnTask) {
  train_save_reload("llama", {{"peft_type", "MODULA_HYPER_LORA"},
                              {"num_tasks", 2},
                              {"r", 2},
                              {"hidden", 8},
                              {"target_modules", {"q_proj", "v_proj"}}});
}
TEST(RegistryMatrix, MixtureOfLoraExpertsTopK) {
  train_save_reload("llama", {{"peft_type", "MODULA_MOE_LORA"},
                              {"num_experts", 4},
                              {"num_experts_per_tok", 2},
                              {"r", 2},
                              {"router_aux_loss_coef", 0.01},
                              {"router_z_loss_coef", 0.001},
                              {"target_modules", kAllLinear}});
}
TEST(RegistryMatrix, FusionOverTrainedBottlenecks) {
  TempDir members;
  json b = {{"peft_type", "MODULA_BOTTLENECK"}, {"config", "pfeiffer"}};
  run(run_config(members, "llama", "m", {{{"name", "b1"}, {"config", b}}, {{"name", "b2"}, {"config", b}}}, 3e-2, 12));
  json before = {{{"name", "b1"}, {"path", members / "m/modules/b1"}, {"trainable", false}},
                 {{"name", "b2"}, {"path", members / "m/modules/b2"}, {"trainable", false}}};
  train_save_reload("llama", {{"peft_type", "MODULA_FUSION"}, {"adapters", {"b1", "b2"}}}, 3e-2, before);
}

// Routing over LoRA modules from a run's `compose`: learned (softmax per example, top-2 per
// token with its auxiliary losses, SMEAR's parameter averaging) and fixed by task metadata.
TEST(RegistryMatrix, RoutedLorasTrainFromTheComposeSpec) {
  json lora = {{"peft_type", "LORA"}, {"r", 2}, {"target_modules", {"q_proj", "v_proj", "down_proj"}}};
  for (std::string route : {"softmax", "top2", "smear"}) {
    TempDir d;
    json modules = {
        {{"name", "l1"}, {"config", lora}}, {{"name", "l2"}, {"config", lora}}, {{"name", "l3"}, {"config", lora}}};
    auto cfg = run_config(d, "llama", "a", modules, 3e-2, 24);
    cfg["compose"] = "route(" + route + ", l1, l2, l3)";
    auto r = run(cfg);
    EXPECT_LT(r.last, r.first) << route;
  }
  TempDir d;  // fixed routing: each task's rows go to its own module
  json modules = {{{"name", "l1"}, {"config", lora}}, {{"name", "l2"}, {"config", lora}}};
  auto cfg = run_config(d, "llama", "a", modules, 3e-2, 24);
  cfg["tasks"] = {{{"name", "qa"}, {"type", "causal_lm"}}, {{"name", "qb"}, {"type", "causal_lm"}}};
  cfg["compose"] = "route(task, l1, l2)";
  auto data = qa_data();
  data["qb"] = data["qa"];
  std::vector<double> losses;
  Callbacks cb;
  cb.on_step = [&](const StepInfo& s) { losses.push_back(s.loss); };
  train::train(parse_train_config(cfg), data, cb);
  ASSERT_GE(losses.size(), 6u);
  EXPECT_LT(losses.back() + losses[losses.size() - 2], losses[0] + losses[1]);
}
