// The module registry through `modula train`'s code path (a YAML config file read by
// load_train_config, then train::train): every module type, with the
// routing it carries, is built from a config, trained a few steps on a tiny model (the
// loss goes down), saved, reloaded from its folder by the same code path, and evaluates
// to the same loss (the eval loss is the mean token cross-entropy of the logits, so equal
// losses to 1e-5 mean the reloaded modules give the trained logits).
#include "composition/registry_matrix.h"

using namespace modula;
using namespace modula::train;
using namespace modula::testing::matrix;
using modula::testing::fixture;
using modula::testing::TempDir;
using json = nlohmann::json;

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
