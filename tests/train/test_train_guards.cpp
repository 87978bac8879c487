// Module folders carry PEFT's task_type of the tasks they served. A run's output is guarded: `modula train` /
// `pretrain` refuse to start a fresh run in a folder that holds one (metrics.jsonl or checkpoints/) unless given
// --overwrite, and resuming with no checkpoint is an error (the library's TrainError names the folder; the CLI exits
// 1), never a silent fresh start.
#include <gtest/gtest.h>

#include <fstream>

#include "modula/train/trainer.h"
#include "support/errors.h"
#include "support/process.h"
#include "tiny.h"

using namespace modula;
using namespace modula::testing;
using json = nlohmann::json;

namespace {

const std::string kCli = MODULA_CLI;

json lm_config(const TempDir& d, const std::string& output) {
  return {
      {"model", fixture("hf/models/llama")},
      {"tokenizer", write_tiny_tokenizer(d / "tokenizer.json", false)},
      {"output", output},
      {"optim", {{"lr", 1e-2}, {"max_steps", 2}, {"batch_size", 2}}},
      {"modules", {{{"name", "m"}, {"config", {{"peft_type", "LORA"}, {"r", 2}, {"target_modules", "all-linear"}}}}}},
      {"tasks", {{{"name", "lm"}, {"type", "causal_lm"}, {"train", d / "text.jsonl"}}}}};
}

// Writes the config as JSON (load_train_config reads .json) and its data.
std::string write(const TempDir& d, const std::string& name, const json& cfg) {
  write_lines(d / "text.jsonl", tiny_text(6));
  std::ofstream(d / name) << cfg.dump(1);
  return d / name;
}

int run(const std::vector<std::string>& args, const std::string& log) { return wait_exit(spawn(args, log)); }

}  // namespace

TEST(TrainGuards, ResumeWithoutACheckpointIsATrainErrorNamingTheFolder) {
  TempDir d;
  auto cfg = train::load_train_config(write(d, "run.json", lm_config(d, d / "out")));
  auto e = error_of([&] { train::train(cfg, {}, {}, /*resume=*/true); });
  EXPECT_NE(e.find("[train] resume: no complete checkpoint in " + (d / "out/checkpoints")), std::string::npos) << e;
  EXPECT_FALSE(fs::exists(d / "out/metrics.jsonl"));  // nothing started
}

TEST(TrainGuards, CliRefusesAnExistingRunWithoutOverwrite) {
  TempDir d;
  const auto cfg = write(d, "run.json", lm_config(d, d / "out"));
  ASSERT_EQ(run({kCli, "train", cfg, "--threads", "1"}, d / "first.log"), 0) << slurp(d / "first.log");
  ASSERT_TRUE(fs::exists(d / "out/metrics.jsonl"));
  const auto before = slurp(d / "out/metrics.jsonl");

  EXPECT_EQ(run({kCli, "train", cfg}, d / "again.log"), 1) << slurp(d / "again.log");
  const auto again = slurp(d / "again.log");
  EXPECT_NE(again.find("error: [train] " + (d / "out") + " already holds a run (metrics.jsonl)"), std::string::npos)
      << again;
  EXPECT_NE(again.find("--overwrite"), std::string::npos) << again;
  EXPECT_EQ(slurp(d / "out/metrics.jsonl"), before);  // untouched

  // -o names the folder the same way.
  EXPECT_EQ(run({kCli, "train", cfg, "-o", d / "out"}, d / "o.log"), 1) << slurp(d / "o.log");
  EXPECT_EQ(run({kCli, "train", cfg, "--overwrite"}, d / "overwrite.log"), 0) << slurp(d / "overwrite.log");
  // A fresh folder needs no flag.
  EXPECT_EQ(run({kCli, "train", cfg, "-o", d / "other"}, d / "other.log"), 0) << slurp(d / "other.log");
}

TEST(TrainGuards, CliResumeWithNothingToResumeExitsOne) {
  TempDir d;
  const auto cfg = write(d, "run.json", lm_config(d, d / "out"));
  EXPECT_EQ(run({kCli, "train", cfg, "--resume"}, d / "resume.log"), 1) << slurp(d / "resume.log");
  const auto log = slurp(d / "resume.log");
  EXPECT_NE(log.find("error: [train] resume: no complete checkpoint in " + (d / "out/checkpoints")), std::string::npos)
      << log;
  EXPECT_FALSE(fs::exists(d / "out/metrics.jsonl"));
}

TEST(TrainGuards, PretrainRefusesAnExistingRunToo) {
  TempDir d;
  auto cfg = lm_config(d, d / "pre");
  cfg.erase("modules");
  cfg["model"] = fixture("hf/models/llama/config.json");
  const auto path = write(d, "pre.json", cfg);
  ASSERT_EQ(run({kCli, "pretrain", path, "--threads", "1"}, d / "first.log"), 0) << slurp(d / "first.log");
  EXPECT_EQ(run({kCli, "pretrain", path}, d / "again.log"), 1) << slurp(d / "again.log");
  EXPECT_NE(slurp(d / "again.log").find("already holds a run"), std::string::npos) << slurp(d / "again.log");
  EXPECT_EQ(run({kCli, "pretrain", path, "--overwrite"}, d / "overwrite.log"), 0) << slurp(d / "overwrite.log");
}

TEST(TrainOutputs, ModuleFoldersCarryTheTaskTypeTheyServed) {
  TempDir d;
  json lora = {{"peft_type", "LORA"}, {"r", 2}, {"target_modules", {"query", "value"}}};
  json cfg = {{"model", fixture("hf/models/bert")},
              {"tokenizer", write_tiny_tokenizer(d / "tokenizer.json", true)},
              {"output", d / "out"},
              {"optim", {{"lr", 1e-2}, {"max_steps", 2}, {"batch_size", 2}}},
              {"modules", {{{"name", "s"}, {"config", lora}}, {{"name", "t"}, {"config", lora}}}},
              {"tasks",
               {{{"name", "sent"}, {"type", "sequence_classification"}, {"modules", {"s"}}},
                {{"name", "ner"}, {"type", "token_classification"}, {"modules", {"t"}}}}}};
  train::Datasets data;
  data["sent"].train = tiny_classification(6);
  data["ner"].train = tiny_tagging(6);
  train::train(train::parse_train_config(cfg), data);
  auto config_of = [&](const std::string& m) {
    return json::parse(std::ifstream(d / ("out/modules/" + m + "/adapter_config.json")));
  };
  EXPECT_EQ(config_of("s")["task_type"], "SEQ_CLS");
  EXPECT_EQ(config_of("t")["task_type"], "TOKEN_CLS");
  EXPECT_EQ(config_of("t")["base_model_name_or_path"], fixture("hf/models/bert"));
}
