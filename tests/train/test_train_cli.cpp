// `modula train` killed with SIGKILL mid-run and resumed reaches the parameters of an
// uninterrupted run; `modula pretrain` writes a loadable HF model folder.
#include <dirent.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <sstream>
#include <thread>

#include "modula/backbone/registry.h"
#include "modula/io/safetensors.h"
#include "modula/train/checkpoint.h"
#include "support/process.h"
#include "tiny.h"

using namespace modula;
using modula::testing::fixture;
using modula::testing::TempDir;
using namespace modula::testing;

namespace {

bool any_checkpoint(const std::string& root) {
  DIR* d = opendir(root.c_str());
  if (!d) return false;
  bool found = false;
  while (dirent* e = readdir(d)) {
    std::string n = e->d_name;
    if (n.rfind("step-", 0) == 0 && n.find(".tmp") == std::string::npos) found = true;
  }
  closedir(d);
  return found;
}

std::string write_config(const TempDir& d, const std::string& name) {
  modula::testing::write_tiny_tokenizer(d / "tokenizer.json", true);
  modula::testing::write_lines(d / "train.jsonl", modula::testing::tiny_classification(24));
  std::string path = d / (name + ".yaml");
  std::ofstream(path)
      << "model: " << fixture("hf/models/bert") << "\n"
      << "tokenizer: tokenizer.json\n"
      << "output: " << name << "\n"
      << "seed: 5\n"
      << "modules:\n  - name: m\n    config: {peft_type: LORA, r: 4, target_modules: all-linear}\n"
      << "tasks:\n  - {name: sent, type: sequence_classification, train: train.jsonl}\n"
      << "optim: {lr: 0.01, max_steps: 150, batch_size: 4, schedule: cosine, warmup_steps: 5, max_grad_norm: 1.0}\n"
      << "checkpoint: {every: 5, keep: 2}\n";
  return path;
}

}  // namespace

TEST(TrainCli, SigkillThenResumeEqualsUninterruptedRun) {
  TempDir d;
  const std::string cli = MODULA_CLI;
  auto full = write_config(d, "full"), killed = write_config(d, "killed");
  ASSERT_EQ(wait_exit(spawn({cli, "train", full}, d / "full.log")), 0) << slurp(d / "full.log");

  pid_t pid = spawn({cli, "train", killed}, d / "killed.log");
  auto start = std::chrono::steady_clock::now();
  while (!any_checkpoint(d / "killed/checkpoints") &&
         std::chrono::steady_clock::now() - start < std::chrono::seconds(60))
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  std::this_thread::sleep_for(std::chrono::milliseconds(100));  // somewhere mid-run, maybe mid-checkpoint
  kill(pid, SIGKILL);
  ASSERT_EQ(wait_exit(pid), -SIGKILL) << "the run finished before it could be killed";
  EXPECT_FALSE(fs::exists(d / "killed/result.json"));
  ASSERT_TRUE(train::load_latest_checkpoint(d / "killed/checkpoints")) << "no loadable checkpoint after SIGKILL";

  ASSERT_EQ(wait_exit(spawn({cli, "train", killed, "--resume"}, d / "resume.log")), 0) << slurp(d / "resume.log");
  EXPECT_NE(slurp(d / "resume.log").find("resumed train at step"), std::string::npos) << slurp(d / "resume.log");
  auto a = io::SafetensorsFile::open(d / "full/modules/m/adapter_model.safetensors");
  auto b = io::SafetensorsFile::open(d / "killed/modules/m/adapter_model.safetensors");
  ASSERT_EQ(a.keys(), b.keys());
  for (const auto& k : a.keys()) EXPECT_TRUE(torch::equal(a.get(k), b.get(k))) << k;
  auto ha = io::SafetensorsFile::open(d / "full/heads.safetensors"),
       hb = io::SafetensorsFile::open(d / "killed/heads.safetensors");
  for (const auto& k : ha.keys()) EXPECT_TRUE(torch::equal(ha.get(k), hb.get(k))) << k;
  // metrics.csv, cut back to the checkpoint and continued, has the uninterrupted run's steps
  // and losses (columns type,phase,step,global_step,task,loss,...).
  auto csv_losses = [&](const std::string& run) {
    std::vector<std::string> out;
    std::ifstream in(d / (run + "/metrics.csv"));
    for (std::string line; std::getline(in, line);) {
      std::vector<std::string> cells;
      std::stringstream ss(line);
      for (std::string c; std::getline(ss, c, ',');) cells.push_back(c);
      if (cells.size() > 5 && cells[0] == "step") out.push_back(cells[2] + " " + cells[4] + " " + cells[5]);
    }
    return out;
  };
  EXPECT_EQ(csv_losses("full").size(), 150u);
  EXPECT_EQ(csv_losses("full"), csv_losses("killed"));
}

TEST(TrainCli, PretrainWritesAnHfModelFolder) {
  TempDir d;
  const std::string cli = MODULA_CLI;
  modula::testing::write_tiny_tokenizer(d / "tokenizer.json", false);
  modula::testing::write_lines(d / "text.jsonl", modula::testing::tiny_text(20));
  std::ofstream(d / "pre.yaml") << "model: " << fixture("hf/models/llama/config.json") << "\n"
                                << "tokenizer: tokenizer.json\noutput: pre\nseed: 1\n"
                                << "tasks: [{name: lm, type: causal_lm, train: text.jsonl}]\n"
                                << "optim: {lr: 0.003, max_steps: 30, batch_size: 4}\n";
  ASSERT_EQ(wait_exit(spawn({cli, "pretrain", d / "pre.yaml"}, d / "pre.log")), 0) << slurp(d / "pre.log");
  auto model = load_backbone(d / "pre/model");
  EXPECT_TRUE(fs::is_file(d / "pre/model/tokenizer.json"));
  // Trained from random init: different from the fixture's weights, and the loss fell.
  auto fixture_model = load_backbone(fixture("hf/models/llama"));
  EXPECT_FALSE(torch::allclose(model->named_parameters()["model.embed_tokens.weight"],
                               fixture_model->named_parameters()["model.embed_tokens.weight"]));
  std::ifstream metrics(d / "pre/metrics.jsonl");
  std::vector<double> losses;
  for (std::string line; std::getline(metrics, line);) {
    auto j = nlohmann::json::parse(line);
    if (j["type"] == "step") losses.push_back(j["loss"]);
  }
  ASSERT_EQ(losses.size(), 30u);
  EXPECT_LT(losses.back(), 0.6 * losses.front());
}
