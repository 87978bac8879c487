// Adapters as `modula train` writes them (LoRA, target_modules: all-linear, through the
// Trainer the CLI runs) merge with every combination type into a folder that loads and
// changes the model; target_modules of any two forms unite to the sites the inputs hold;
// trained module folders carry the fields PEFT's AutoPeftModel* reads.
#include <gtest/gtest.h>

#include <fstream>
#include <set>

#include "modula/backbone/registry.h"
#include "modula/composition/registry.h"
#include "modula/merge/lora_merge.h"
#include "modula/modules/targets.h"
#include "modula/train/trainer.h"
#include "support/process.h"
#include "train/tiny.h"

using namespace modula;
using modula::testing::fixture;
using modula::testing::TempDir;
using json = nlohmann::json;

namespace {

// Two all-linear LoRA adapters trained on different text, once for the whole binary.
struct Trained {
  TempDir dir;
  std::string a = dir / "a/modules/m", b = dir / "b/modules/m";
  Trained() {
    const auto tokenizer = modula::testing::write_tiny_tokenizer(dir / "tokenizer.json", false);
    for (const auto& [run, seed] : {std::pair<std::string, int>{"a", 1}, {"b", 2}}) {
      json cfg = {{"model", fixture("hf/models/llama")},
                  {"tokenizer", tokenizer},
                  {"output", dir / run},
                  {"seed", seed},
                  {"optim", {{"lr", 3e-2}, {"max_steps", 4}, {"batch_size", 4}}},
                  {"modules",
                   {{{"name", "m"}, {"config", {{"peft_type", "LORA"}, {"r", 4}, {"target_modules", "all-linear"}}}}}},
                  {"tasks", {{{"name", "lm"}, {"type", "causal_lm"}}}}};
      train::Datasets data;
      data["lm"].train = modula::testing::tiny_text(seed == 1 ? 8 : 5);
      train::train(train::parse_train_config(cfg), data);
    }
  }
};

const Trained& trained() {
  static Trained t;
  return t;
}

torch::Tensor logits(Backbone& model) {
  torch::NoGradGuard no_grad;
  BackboneInput in;
  in.input_ids = torch::tensor({{1, 5, 9, 12, 7, 3}}, torch::kInt64);
  return model.forward(in).logits;
}

json read_config(const std::string& dir) { return json::parse(std::ifstream(fs::join(dir, "adapter_config.json"))); }

}  // namespace

TEST(TrainedModules, AdapterConfigHasWhatAutoPeftModelReads) {
  auto c = read_config(trained().a);
  EXPECT_EQ(c["peft_type"], "LORA");
  EXPECT_EQ(c["base_model_name_or_path"], fixture("hf/models/llama")) << c.dump();
  EXPECT_EQ(c["task_type"], "CAUSAL_LM") << c.dump();
  ASSERT_TRUE(c.contains("revision"));
  EXPECT_TRUE(c["revision"].is_null());
  EXPECT_EQ(c["inference_mode"], true);
  EXPECT_EQ(c["target_modules"], "all-linear");
}

// The failure: `merge-adapters -c ties` over two such folders gave
// target_modules "(all-linear)|(all-linear)", which matches no site.
TEST(TrainedModules, EveryCombinationTypeMergesAllLinearAdapters) {
  const auto& t = trained();
  auto model = load_backbone(fixture("hf/models/llama"));
  const auto base = logits(*model);
  TempDir out;
  for (const auto& type : lora_combination_types()) {
    SCOPED_TRACE(type);
    auto inputs = load_module_folders(*model, {t.a, t.b});
    auto o = LoraMergeOptions({0.6, 0.4}).combination_type(type).seed(3);
    if (type != "linear" && type != "svd" && type != "cat") o.density(0.7);
    auto merged = merge_lora_adapters(*model, inputs, o, "merged");
    EXPECT_EQ(merged.config["target_modules"], "all-linear");
    EXPECT_EQ(merged.modules.size(), inputs[0].modules.size());
    save_module(merged, out / type);
    remove_adapter(merged);
    for (auto& a : inputs) remove_adapter(a);
    ASSERT_TRUE(torch::equal(logits(*model), base)) << "the inputs were not removed";

    auto loaded = load_module(*model, out / type);
    EXPECT_GT((logits(*model) - base).abs().max().item<double>(), 1e-6) << "the merge changes nothing";
    remove_adapter(loaded);
  }
}

// The same through the CLI, as the issue ran it.
TEST(TrainedModules, MergeAdaptersCliMergesAllLinearAdapters) {
  const auto& t = trained();
  TempDir d;
  const std::vector<std::string> args = {MODULA_CLI,  "merge-adapters",
                                         "-m",        fixture("hf/models/llama"),
                                         "-a",        t.a,
                                         "-a",        t.b,
                                         "-w",        "0.7,0.3",
                                         "-c",        "ties",
                                         "--density", "0.5",
                                         "-o",        d / "ties"};
  ASSERT_EQ(modula::testing::wait_exit(modula::testing::spawn(args, d / "log")), 0)
      << modula::testing::slurp(d / "log");
  EXPECT_NE(modula::testing::slurp(d / "log").find("merged 2 LoRA adapter(s) with ties"), std::string::npos);
  auto c = read_config(d / "ties");
  EXPECT_EQ(c["target_modules"], "all-linear");
  EXPECT_EQ(c["base_model_name_or_path"], fixture("hf/models/llama"));
}

// Any two forms of target_modules: the merged adapter sits exactly at the union of the
// inputs' sites.
TEST(MergeTargets, AnyTwoFormsUniteToTheSitesTheInputsHold) {
  auto model = load_backbone(fixture("hf/models/llama"));
  const json forms[] = {"all-linear", json::array({"q_proj", "v_proj"}), json::array({"down_proj"}), ".*\\.k_proj",
                        ".*\\.layers\\.1\\..*"};
  auto sites_of = [](const Adapter& a) {
    std::set<std::string> s;
    for (const auto& m : a.modules) s.insert(m.site);
    return s;
  };
  for (const auto& ta : forms)
    for (const auto& tb : forms) {
      SCOPED_TRACE(ta.dump() + " + " + tb.dump());
      auto a = add_adapter(*model, {{"peft_type", "LORA"}, {"r", 2}, {"target_modules", ta}}, "a");
      auto b = add_adapter(*model, {{"peft_type", "LORA"}, {"r", 2}, {"target_modules", tb}}, "b");
      auto want = sites_of(a);
      for (const auto& s : sites_of(b)) want.insert(s);
      auto m = merge_lora_adapters(*model, {a, b}, LoraMergeOptions({0.5, 0.5}).combination_type("cat"), "m");
      EXPECT_EQ(sites_of(m), want);
      if (ta == tb) {
        EXPECT_EQ(m.config["target_modules"], ta);
      }
      const json config = m.config;
      for (auto* x : {&m, &b, &a}) remove_adapter(*x);
      // The written config selects the same sites on the bare model (what PEFT and load_module do).
      std::set<std::string> selected;
      for (const auto& [path, layer] : select_sites(*model, config)) selected.insert(path);
      EXPECT_EQ(selected, want) << config["target_modules"].dump();
    }
  // Inputs on different layers (layers_to_transform) unite too: the filters go, the sites stay.
  auto a = add_adapter(
      *model, {{"peft_type", "LORA"}, {"r", 2}, {"target_modules", "all-linear"}, {"layers_to_transform", {0}}}, "a");
  auto b = add_adapter(
      *model, {{"peft_type", "LORA"}, {"r", 2}, {"target_modules", "all-linear"}, {"layers_to_transform", {1}}}, "b");
  auto m = merge_lora_adapters(*model, {a, b}, LoraMergeOptions({0.5, 0.5}).combination_type("cat"), "m");
  EXPECT_EQ(m.modules.size(), a.modules.size() + b.modules.size());
  EXPECT_TRUE(m.config["layers_to_transform"].is_null());
  EXPECT_TRUE(m.config["target_modules"].is_array());
}
