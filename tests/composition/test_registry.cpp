// The module registry through `modula train`'s code path (a YAML config file read by
// load_train_config, then train::train): every module type, with the
// routing it carries, is built from a config, trained a few steps on a tiny model (the
// loss goes down), saved, reloaded from its folder by the same code path, and evaluates
// to the same loss (the eval loss is the mean token cross-entropy of the logits, so equal
// losses to 1e-5 mean the reloaded modules give the trained logits).
#include <algorithm>
#include <map>
#include <set>

#include "composition/registry_matrix.h"
#include "modula/io/safetensors.h"

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
                                   "MODULA_MOE_LORA",
                                   "MODULA_MOE_FFN",
                                   "MODULA_COMPOSITION"};
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

// LT-SFT's two phases as a stage of the run (MODULA_SPARSE_FT with mask: lottery_ticket): a
// dense phase of dense_steps (labelled lt_sft) selects the mask, then the sparse values train.
TEST(RegistryMatrix, LtSftTwoPhasesAsARunStage) {
  json sft = {{"peft_type", "MODULA_SPARSE_FT"},
              {"mask", "lottery_ticket"},
              {"dense_steps", 6},
              {"target_parameters", {"model.embed_tokens.weight", "re:.*mlp.down_proj.weight"}},
              {"k", 256}};
  train_save_reload("llama", sft);
}

// The mask is the top-K of |θ₁ − θ₀| of the dense phase: embedding rows of tokens the data
// never uses get no gradient, so every selected entry lies in a used row. A random mask of
// the same size (the control) puts most of its entries elsewhere (9 of 512 rows are used).
TEST(RegistryMatrix, LtSftMaskComesFromTheDensePhase) {
  auto used_rows = [](const std::string& folder) {
    auto f = io::SafetensorsFile::open(fs::join(folder, "adapter_model.safetensors"));
    auto rows = f.get("model.embed_tokens.weight.sft_indices").div(64, "floor");  // hidden size 64
    std::set<int64_t> used = {0, 1, 2};                                           // <unk> <s> </s>
    const auto& words = modula::testing::tiny_words();
    for (const char* w : {"alice", "bob", "lives", "in", "paris", "london"})
      used.insert(3 + (std::find(words.begin(), words.end(), w) - words.begin()));
    int64_t inside = 0;
    for (int64_t i = 0; i < rows.numel(); ++i) inside += used.count(rows[i].item<int64_t>());
    return std::make_pair(inside, rows.numel());
  };
  for (std::string mask : {"lottery_ticket", "random"}) {
    TempDir d;
    json sft = {{"peft_type", "MODULA_SPARSE_FT"},
                {"mask", mask},
                {"dense_steps", 3},
                {"target_parameters", {"model.embed_tokens.weight"}},
                {"k", 64}};
    std::map<std::string, int64_t> steps;
    Callbacks cb;
    cb.on_step = [&](const StepInfo& s) { steps[s.phase] += 1; };
    train::train(parse_train_config(run_config(d, "llama", "a", {{{"name", "m"}, {"config", sft}}}, 3e-2, 2)),
                 qa_data(), cb);
    auto [inside, k] = used_rows(d / "a/modules/m");
    EXPECT_EQ(k, 64);
    if (mask == "lottery_ticket") {
      EXPECT_EQ(steps, (std::map<std::string, int64_t>{{"lt_sft", 3}, {"train", 2}}));
      EXPECT_EQ(inside, k) << "entries outside the rows the data uses";
    } else {
      EXPECT_EQ(steps, (std::map<std::string, int64_t>{{"train", 2}}));
      EXPECT_LT(inside, k / 4) << "the control should rarely hit the used rows";
    }
  }
  auto msg = modula::testing::error_of([] {
    TempDir d;
    json sft = {{"peft_type", "MODULA_SPARSE_FT"}, {"mask", "winning"}, {"target_parameters", {"lm_head.weight"}}};
    train::train(parse_train_config(run_config(d, "llama", "a", {{{"name", "m"}, {"config", sft}}}, 3e-2, 1)),
                 qa_data(), {});
  });
  EXPECT_NE(msg.find("'mask' must be random or lottery_ticket, got 'winning'"), std::string::npos) << msg;
}

// A run with an LT-SFT stage, killed in its main phase and resumed from the checkpoint, ends
// with the same diff as the uninterrupted run (the dense phase re-runs deterministically to
// recover the mask; the values come from the checkpoint).
TEST(RegistryMatrix, LtSftRunResumesToTheSameDiff) {
  json sft = {{"peft_type", "MODULA_SPARSE_FT"},
              {"mask", "lottery_ticket"},
              {"dense_steps", 4},
              {"target_parameters", {"re:.*mlp.down_proj.weight"}},
              {"k", 128}};
  auto make = [&](const TempDir& d) {
    auto cfg = run_config(d, "llama", "a", {{{"name", "m"}, {"config", sft}}}, 3e-2, 8);
    cfg["checkpoint"] = {{"every", 3}, {"keep", 2}};
    return parse_train_config(cfg);
  };
  TempDir a, b;
  train::train(make(a), qa_data(), {});
  Callbacks stop;
  stop.on_step = [](const StepInfo& s) {
    if (s.phase == "train" && s.step == 7) throw std::runtime_error("interrupted");
  };
  EXPECT_THROW(train::train(make(b), qa_data(), stop), std::runtime_error);
  auto r = train::train(make(b), qa_data(), {}, /*resume=*/true);
  EXPECT_TRUE(r.resumed);
  auto fa = io::SafetensorsFile::open(a / "a/modules/m/adapter_model.safetensors");
  auto fb = io::SafetensorsFile::open(b / "a/modules/m/adapter_model.safetensors");
  ASSERT_EQ(fa.keys(), fb.keys());
  for (const auto& k : fa.keys()) EXPECT_TRUE(torch::equal(fa.get(k), fb.get(k))) << k;
}

// route(task, a, b) in `compose` (fixed routing by the batch's task): each task's rows go to
// their own member; trains (both tasks' eval losses fall), is written as out/compose, and the
// members plus that folder reload to the same eval loss on both tasks. Over LoRA, (IA)³,
// bottleneck adapters, and prompts / prefixes of different lengths (one input bank).
static void route_by_task_save_reload(const json& a, const json& b) {
  Datasets data = qa_data();
  for (auto& r : data["qa"].train) data["qb"].train.push_back({{"prompt", r["prompt"]}, {"completion", "yes"}});
  data["qb"].eval = data["qb"].train;
  const json tasks = {{{"name", "qa"}, {"type", "causal_lm"}}, {{"name", "qb"}, {"type", "causal_lm"}}};
  auto eval = [&](json cfg) {
    cfg["tasks"] = tasks;
    auto r = train::train(parse_train_config(cfg), data, {});
    return std::make_pair(r.eval.at("qa").at("loss"), r.eval.at("qb").at("loss"));
  };
  TempDir d;
  json modules = {{{"name", "a"}, {"config", a}}, {{"name", "b"}, {"config", b}}};
  auto cfg = run_config(d, "llama", "run", modules, 3e-2, 16);
  cfg["compose"] = "route(task, a, b)";
  auto before = cfg;
  before["optim"]["lr"] = 1e-12, before["optim"]["max_steps"] = 1, before["output"] = d / "untrained";
  auto [qa0, qb0] = eval(before);
  auto [qa1, qb1] = eval(cfg);
  EXPECT_LT(qa1, qa0) << a.dump();
  EXPECT_LT(qb1, qb0) << b.dump();
  json reload = {{{"name", "a"}, {"path", d / "run/modules/a"}, {"trainable", false}},
                 {{"name", "b"}, {"path", d / "run/modules/b"}, {"trainable", false}},
                 {{"name", "c0"}, {"path", d / "run/compose"}, {"trainable", false}},
                 {{"name", "probe"}, {"config", {{"peft_type", "LORA"}, {"r", 1}, {"target_modules", {"k_proj"}}}}}};
  auto [qa2, qb2] = eval(run_config(d, "llama", "again", reload, 1e-12, 1));
  EXPECT_NEAR(qa2, qa1, 1e-5 * std::max(1.0, qa1)) << a.dump();
  EXPECT_NEAR(qb2, qb1, 1e-5 * std::max(1.0, qb1)) << b.dump();
}

TEST(RegistryMatrix, ComposeRouteByTaskOverEveryKind) {
  json lora = {{"peft_type", "LORA"}, {"r", 2}, {"target_modules", {"q_proj", "v_proj"}}};
  json ia3 = {
      {"peft_type", "IA3"}, {"target_modules", {"v_proj", "down_proj"}}, {"feedforward_modules", {"down_proj"}}};
  json bottleneck = {{"peft_type", "MODULA_BOTTLENECK"}, {"config", "pfeiffer"}, {"reduction_factor", 4}};
  route_by_task_save_reload(lora, lora);
  route_by_task_save_reload(ia3, ia3);
  route_by_task_save_reload(bottleneck, bottleneck);
  for (std::string type : {"PROMPT_TUNING", "PREFIX_TUNING"})
    route_by_task_save_reload({{"peft_type", type}, {"num_virtual_tokens", 3}},
                              {{"peft_type", type}, {"num_virtual_tokens", 5}});
}

TEST(RegistryMatrix, PromptsAreRoutedByMetadataOnly) {
  auto msg = modula::testing::error_of([&] {
    TempDir d;
    json modules = {{{"name", "p"}, {"config", {{"peft_type", "PROMPT_TUNING"}, {"num_virtual_tokens", 3}}}},
                    {{"name", "q"}, {"config", {{"peft_type", "PROMPT_TUNING"}, {"num_virtual_tokens", 5}}}}};
    auto cfg = run_config(d, "llama", "a", modules, 3e-2, 1);
    cfg["compose"] = "route(softmax, p, q)";
    train::train(parse_train_config(cfg), qa_data(), {});
  });
  EXPECT_NE(msg.find("input modules are routed by metadata only"), std::string::npos) << msg;
}
