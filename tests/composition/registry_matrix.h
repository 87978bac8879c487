// The registry matrix's shared steps (test_registry*.cpp): a run config on a tiny model,
// a run through `modula train`'s code path (YAML file -> load_train_config -> train::train),
// and train -> save -> reload -> same eval loss.
#pragma once

#include <gtest/gtest.h>

#include <fstream>

#include "modula/backbone/registry.h"
#include "modula/composition/registry.h"
#include "modula/train/trainer.h"
#include "modula/util/fs.h"
#include "support/errors.h"
#include "train/tiny.h"

namespace modula::testing::matrix {

using namespace modula::train;
using json = nlohmann::json;

inline Datasets qa_data() {
  Datasets data;
  for (int i = 0; i < 16; ++i)
    data["qa"].train.push_back(
        {{"prompt", i % 2 ? "alice lives in" : "bob lives in"}, {"completion", i % 2 ? "paris" : "london"}});
  data["qa"].eval = data["qa"].train;
  return data;
}

inline json run_config(const TempDir& dir, const std::string& model, const std::string& out, const json& modules,
                       double lr, int64_t steps) {
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

inline Run run(const json& cfg, const Datasets& data = qa_data()) {
  std::vector<double> losses;
  Callbacks cb;
  cb.on_step = [&](const StepInfo& s) { losses.push_back(s.loss); };
  // Through the YAML reader, as `modula train run.yaml` does (JSON flow style is YAML).
  const auto path = cfg.at("output").get<std::string>() + ".yaml";
  std::ofstream(path) << cfg.dump(2);
  auto r = train::train(load_train_config(path), data, cb);
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
inline void train_save_reload(const std::string& model, const json& config, double lr = 3e-2,
                              json before = json::array(), const Datasets& data = qa_data(),
                              const json& extra = json::object()) {
  TempDir d;
  json modules = before;
  modules.push_back({{"name", "m"}, {"config", config}});
  auto first = run_config(d, model, "a", modules, lr, 24);
  first.update(extra);
  auto trained = run(first, data);
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
  auto second = run_config(d, model, "b", reload, 1e-12, 1);
  second.update(extra);
  auto again = run(second, data);
  EXPECT_NEAR(again.eval_loss, trained.eval_loss, 1e-5 * std::max(1.0, std::abs(trained.eval_loss))) << config.dump();
}

inline const json kAllLinear = "all-linear";

}  // namespace modula::testing::matrix
