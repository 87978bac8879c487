// Data parallel `modula train` over c10d/Gloo on loopback: 2 ranks reach the trained modules
// of one process with the same global batch (multi-task with per-task modules, MoE-LoRA
// routing); a killed or hung rank stops the other within the timeout and the run resumes
// with 1 rank; the launcher names a dead rank; a busy port or absent master is a clear error.
#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <map>
#include <thread>

#include "modula/io/safetensors.h"
#include "modula/util/fs.h"
#include "support/process.h"
#include "tiny.h"

using namespace modula;
using modula::testing::fixture;
using modula::testing::TempDir;
using Clock = std::chrono::steady_clock;
using namespace modula::testing;

namespace {

Env rank_env(int rank, int world, int port) {
  return {{"RANK", std::to_string(rank)},
          {"WORLD_SIZE", std::to_string(world)},
          {"MASTER_ADDR", "127.0.0.1"},
          {"MASTER_PORT", std::to_string(port)}};
}

bool wait_for_checkpoint(const std::string& root, double seconds) {
  auto end = Clock::now() + std::chrono::duration<double>(seconds);
  while (Clock::now() < end) {
    if (DIR* d = opendir(root.c_str())) {
      bool found = false;
      while (dirent* e = readdir(d)) {
        std::string n = e->d_name;
        if (n.rfind("step-", 0) == 0 && n.find(".tmp") == std::string::npos) found = true;
      }
      closedir(d);
      if (found) return true;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return false;
}

// Max |a - b| over every tensor of the run's modules and heads (keys must match).
double max_difference(const std::string& a, const std::string& b, const std::vector<std::string>& files) {
  double worst = 0;
  for (const auto& f : files) {
    auto x = io::SafetensorsFile::open(fs::join(a, f)), y = io::SafetensorsFile::open(fs::join(b, f));
    EXPECT_EQ(x.keys(), y.keys()) << f;
    for (const auto& k : x.keys()) worst = std::max(worst, (x.get(k) - y.get(k)).abs().max().item<double>());
  }
  return worst;
}

// Three task types (uneven token counts per rank), one module each, temperature sampling,
// accumulation, clipping, warmup + cosine; batch 5 splits 2 + 3 and the short last batches
// leave a rank without rows.
std::string multitask_config(const TempDir& d) {
  modula::testing::write_tiny_tokenizer(d / "tokenizer.json", false);
  modula::testing::write_lines(d / "sent.jsonl", modula::testing::tiny_classification(21));
  modula::testing::write_lines(d / "ner.jsonl", modula::testing::tiny_tagging(13));
  modula::testing::write_lines(d / "text.jsonl", modula::testing::tiny_text(11));
  std::string path = d / "multitask.yaml";
  std::ofstream(path) << "model: " << fixture("hf/models/llama") << "\ntokenizer: tokenizer.json\nseed: 3\n"
                      << "modules:\n"
                      << "  - {name: m_sent, config: {peft_type: LORA, r: 4, target_modules: all-linear}}\n"
                      << "  - {name: m_ner, config: {peft_type: LORA, r: 2, target_modules: [q_proj, v_proj]}}\n"
                      << "  - {name: m_lm, config: {peft_type: LORA, r: 2, target_modules: [o_proj, down_proj]}}\n"
                      << "tasks:\n"
                      << "  - {name: sent, type: sequence_classification, train: sent.jsonl, eval: sent.jsonl, "
                         "modules: [m_sent]}\n"
                      << "  - {name: ner, type: token_classification, train: ner.jsonl, eval: ner.jsonl, modules: "
                         "[m_ner]}\n"
                      << "  - {name: lm, type: causal_lm, train: text.jsonl, eval: text.jsonl, modules: [m_lm]}\n"
                      << "multitask: {sampling: temperature, temperature: 2.0}\n"
                      << "optim: {lr: 0.005, max_steps: 16, batch_size: 5, grad_accum: 2, max_grad_norm: 1.0, "
                         "schedule: cosine, warmup_steps: 2, weight_decay: 0.01}\n"
                      << "eval: {every: 8, batch_size: 4}\n";
  return path;
}

// MoE-LoRA: every token routed by a learned top-2 router (aux losses off: a load-balancing
// loss of a shard is not the shard of the global batch's). eps 1e-6: rarely chosen experts
// get gradients near Adam's default eps (1e-8), where g / (√v + eps) turns float summation
// noise into visible steps; with eps 1e-8 even one process on 1 vs 2 threads differs by
// 7e-6 after one step and 4e-4 after eight.
std::string moe_config(const TempDir& d) {
  modula::testing::write_tiny_tokenizer(d / "tokenizer.json", true);
  modula::testing::write_lines(d / "a.jsonl", modula::testing::tiny_classification(18));
  modula::testing::write_lines(d / "b.jsonl", modula::testing::tiny_classification(14, "great", "awful"));
  std::string path = d / "moe.yaml";
  std::ofstream(path) << "model: " << fixture("hf/models/bert") << "\ntokenizer: tokenizer.json\nseed: 7\n"
                      << "modules:\n  - {name: moe, config: {peft_type: MODULA_MOE_LORA, num_experts: 4, "
                         "num_experts_per_tok: 2, r: 2, router_aux_loss_coef: 0, router_z_loss_coef: 0, "
                         "target_modules: all-linear}}\n"
                      << "tasks:\n  - {name: a, type: sequence_classification, train: a.jsonl, eval: a.jsonl}\n"
                      << "  - {name: b, type: sequence_classification, train: b.jsonl, eval: b.jsonl}\n"
                      << "optim: {lr: 0.01, max_steps: 12, batch_size: 6, max_grad_norm: 1.0, eps: 1.0e-6}\n"
                      << "eval: {every: 6}\n";
  return path;
}

// One task, many short steps and frequent checkpoints: a run to kill.
std::string long_config(const TempDir& d, int steps) {
  modula::testing::write_tiny_tokenizer(d / "tokenizer.json", true);
  modula::testing::write_lines(d / "train.jsonl", modula::testing::tiny_classification(24));
  std::string path = d / "long.yaml";
  std::ofstream(path) << "model: " << fixture("hf/models/bert") << "\ntokenizer: tokenizer.json\nseed: 5\n"
                      << "modules:\n  - {name: m, config: {peft_type: LORA, r: 4, target_modules: all-linear}}\n"
                      << "tasks:\n  - {name: sent, type: sequence_classification, train: train.jsonl}\n"
                      << "optim: {lr: 0.002, max_steps: " << steps << ", batch_size: 4}\n"
                      << "checkpoint: {every: 2, keep: 2}\n";
  return path;
}

void expect_same_run(const TempDir& d, const std::string& one, const std::string& two,
                     const std::vector<std::string>& files, double param_tol = 1e-5) {
  EXPECT_LE(max_difference(d / one, d / two, files), param_tol);
  auto a = nlohmann::json::parse(slurp(fs::join(d / one, "result.json")));
  auto b = nlohmann::json::parse(slurp(fs::join(d / two, "result.json")));
  EXPECT_NEAR(a["final_loss"].get<double>(), b["final_loss"].get<double>(), 1e-5);
  // Relative for metrics above 1: a perplexity is exp(loss), so the losses' 1e-5 is 1e-5 of it
  // (perplexity 299.5 of the lm task differed by 7e-5 on an AMD EPYC machine, 2.4e-7 of it).
  for (auto& [task, metrics] : a["eval"].items())
    for (auto& [k, v] : metrics.items()) {
      const double want = b["eval"][task][k].get<double>();
      EXPECT_NEAR(v.get<double>(), want, 1e-5 * std::max(1.0, std::abs(want))) << task << " " << k;
    }
}

// Every step's gradient all-reduce started during backward: allreduce_early, the fraction of
// its buckets started before the sync point, is 1 (no bucket waits for a parameter the
// step's backward cannot reach, such as the module of a task it did not sample).
void expect_overlap(const std::string& run) {
  std::ifstream in(fs::join(run, "metrics.jsonl"));
  int steps = 0;
  for (std::string line; std::getline(in, line);)
    if (auto j = nlohmann::json::parse(line); j["type"] == "step") {
      ++steps;
      EXPECT_EQ(j.value("allreduce_early", -1.0), 1.0) << line;
    }
  EXPECT_GT(steps, 0);
}

const std::string kCli = MODULA_CLI;

}  // namespace

TEST(Distributed, TwoRanksEqualOneProcessMultiTask) {
  TempDir d;
  auto cfg = multitask_config(d);
  ASSERT_EQ(wait_exit(spawn({kCli, "train", cfg, "-o", d / "one"}, d / "one.log")), 0) << slurp(d / "one.log");
  // 10 KB buckets: many, some holding the modules of tasks a step does not sample.
  ASSERT_EQ(wait_exit(spawn({kCli, "train", cfg, "-o", d / "two", "--nproc", "2"}, d / "two.log",
                            {{"MODULA_DIST_BUCKET_MB", "0.01"}})),
            0)
      << slurp(d / "two.log");
  EXPECT_NE(slurp(d / "two.log").find("distributed: 2 ranks, backend gloo"), std::string::npos) << slurp(d / "two.log");
  expect_overlap(d / "two");
  expect_same_run(d, "one", "two",
                  {"modules/m_sent/adapter_model.safetensors", "modules/m_ner/adapter_model.safetensors",
                   "modules/m_lm/adapter_model.safetensors", "heads.safetensors"});
  // The loss each step logs is the global batch's, as one process logs it.
  auto losses = [&](const std::string& run) {
    std::vector<double> out;
    std::ifstream in(fs::join(d / run, "metrics.jsonl"));
    for (std::string line; std::getline(in, line);)
      if (auto j = nlohmann::json::parse(line); j["type"] == "step") out.push_back(j["loss"]);
    return out;
  };
  auto a = losses("one"), b = losses("two");
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) EXPECT_NEAR(a[i], b[i], 1e-5) << "step " << i + 1;
}

TEST(Distributed, TwoRanksEqualOneProcessMoeLora) {
  TempDir d;
  auto cfg = moe_config(d);
  ASSERT_EQ(wait_exit(spawn({kCli, "train", cfg, "-o", d / "one"}, d / "one.log")), 0) << slurp(d / "one.log");
  ASSERT_EQ(wait_exit(spawn({kCli, "train", cfg, "-o", d / "two", "--nproc", "2"}, d / "two.log")), 0)
      << slurp(d / "two.log");
  // Parameters to 1e-4: two ranks sum the gradient in another order, and Adam (eps 1e-6)
  // divides each coordinate's update by its own gradient scale, so for the router and expert
  // coordinates whose gradients are tiny that rounding grows (measured: 2.2e-5 on lora_B
  // after 12 steps on an AMD EPYC with AVX-512). Without the all-reduce each rank
  // would step on its own shard's gradient, and one Adam step moves a coordinate by up to
  // lr = 1e-2, two orders above this bound; losses and eval metrics still agree to 1e-5.
  expect_same_run(d, "one", "two", {"modules/moe/adapter_model.safetensors", "heads.safetensors"}, 1e-4);
  expect_overlap(d / "two");
}

TEST(Distributed, KilledRankStopsTheOtherThenOneRankResumes) {
  TempDir d;
  auto cfg = long_config(d, 400);
  const int port = free_port();
  const std::vector<std::string> args = {kCli, "train", cfg, "-o", d / "run", "--dist-timeout", "10"};
  pid_t r0 = spawn(args, d / "r0.log", rank_env(0, 2, port));
  pid_t r1 = spawn(args, d / "r1.log", rank_env(1, 2, port));
  ASSERT_TRUE(wait_for_checkpoint(d / "run/checkpoints", 60)) << slurp(d / "r0.log") << slurp(d / "r1.log");
  kill(r1, SIGKILL);
  const auto killed = Clock::now();
  EXPECT_EQ(wait_exit(r1), -SIGKILL);
  EXPECT_EQ(wait_exit(r0), 1) << slurp(d / "r0.log");
  EXPECT_LT(std::chrono::duration<double>(Clock::now() - killed).count(), 10.0);
  const std::string log = slurp(d / "r0.log");
  EXPECT_NE(log.find("error: [distributed] rank 0 of 2:"), std::string::npos) << log;
  EXPECT_FALSE(fs::exists(d / "run/result.json"));
  // The same run continues in one process from rank 0's last checkpoint.
  ASSERT_EQ(wait_exit(spawn({kCli, "train", cfg, "-o", d / "run", "--resume"}, d / "resume.log")), 0)
      << slurp(d / "resume.log");
  EXPECT_NE(slurp(d / "resume.log").find("resumed train at step"), std::string::npos) << slurp(d / "resume.log");
  auto result = nlohmann::json::parse(slurp(d / "run/result.json"));
  EXPECT_EQ(result["steps"], 400);
  EXPECT_TRUE(result["resumed"].get<bool>());
}

TEST(Distributed, HungRankFailsTheOtherWithinTheTimeout) {
  TempDir d;
  auto cfg = long_config(d, 400);
  const int port = free_port();
  const std::vector<std::string> args = {kCli, "train", cfg, "-o", d / "run", "--dist-timeout", "3"};
  pid_t r0 = spawn(args, d / "r0.log", rank_env(0, 2, port));
  pid_t r1 = spawn(args, d / "r1.log", rank_env(1, 2, port));
  ASSERT_TRUE(wait_for_checkpoint(d / "run/checkpoints", 60)) << slurp(d / "r0.log") << slurp(d / "r1.log");
  kill(r1, SIGSTOP);  // alive, connected, silent
  const auto stopped = Clock::now();
  const int rc = wait_exit(r0);
  const double waited = std::chrono::duration<double>(Clock::now() - stopped).count();
  kill(r1, SIGKILL);
  wait_exit(r1);
  EXPECT_EQ(rc, 1) << slurp(d / "r0.log");
  EXPECT_GE(waited, 2.5);  // it waited for the timeout, not for something else
  EXPECT_LT(waited, 10.0);
  EXPECT_NE(slurp(d / "r0.log").find("did not answer within the timeout (3 s)"), std::string::npos)
      << slurp(d / "r0.log");
}

TEST(Distributed, LauncherNamesTheRankThatDiedAndStopsTheOthers) {
  TempDir d;
  auto cfg = long_config(d, 400);
  pid_t launcher = spawn({kCli, "train", cfg, "-o", d / "run", "--nproc", "2"}, d / "launch.log");
  ASSERT_TRUE(wait_for_checkpoint(d / "run/checkpoints", 60)) << slurp(d / "launch.log");
  // The launcher's child with RANK=1.
  pid_t rank1 = 0;
  if (DIR* proc = opendir("/proc")) {
    while (dirent* e = readdir(proc)) {
      const pid_t pid = static_cast<pid_t>(std::atoi(e->d_name));
      if (pid <= 0) continue;
      std::string stat = slurp("/proc/" + std::to_string(pid) + "/stat");
      auto close_paren = stat.rfind(')');
      if (close_paren == std::string::npos) continue;
      int ppid = 0;
      char state = 0;
      if (std::sscanf(stat.c_str() + close_paren + 1, " %c %d", &state, &ppid) != 2 || ppid != launcher) continue;
      std::string env = slurp("/proc/" + std::to_string(pid) + "/environ");
      if (env.find(std::string("RANK=1") + '\0') != std::string::npos && env.find("LOCAL_RANK=1") != std::string::npos)
        rank1 = pid;
    }
    closedir(proc);
  }
  ASSERT_GT(rank1, 0) << "no child with RANK=1";
  kill(rank1, SIGKILL);
  const auto killed = Clock::now();
  EXPECT_EQ(wait_exit(launcher), 1);
  EXPECT_LT(std::chrono::duration<double>(Clock::now() - killed).count(), 10.0);
  const std::string log = slurp(d / "launch.log");
  EXPECT_NE(log.find("error: [distributed] rank 1 (pid " + std::to_string(rank1) +
                     ") was killed by signal 9; stopped the other ranks"),
            std::string::npos)
      << log;
}

TEST(Distributed, BusyPortAndAbsentMasterAreClearErrors) {
  TempDir d;
  auto cfg = long_config(d, 4);
  int fd = socket(AF_INET, SOCK_STREAM, 0);  // a port someone else listens on
  sockaddr_in a{};
  a.sin_family = AF_INET, a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  ASSERT_EQ(listen(fd, 1), 0);
  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  const int busy = ntohs(a.sin_port);
  EXPECT_EQ(wait_exit(spawn({kCli, "train", cfg, "-o", d / "a"}, d / "busy.log", rank_env(0, 2, busy))), 1);
  close(fd);
  EXPECT_NE(slurp(d / "busy.log").find("rank 0 cannot serve the rendezvous at 127.0.0.1:" + std::to_string(busy)),
            std::string::npos)
      << slurp(d / "busy.log");

  const auto start = Clock::now();
  EXPECT_EQ(wait_exit(spawn({kCli, "train", cfg, "-o", d / "b", "--dist-timeout", "2"}, d / "absent.log",
                            rank_env(1, 2, free_port()))),
            1);
  EXPECT_LT(std::chrono::duration<double>(Clock::now() - start).count(), 15.0);
  EXPECT_NE(slurp(d / "absent.log").find("rank 1 cannot reach the master"), std::string::npos)
      << slurp(d / "absent.log");
}

TEST(Distributed, OneProcessCheckpointResumesOnTwoRanks) {
  TempDir d;
  auto short_run = long_config(d, 8);  // its last checkpoint: step 6 (constant lr: the same steps as a 12-step run)
  std::string cfg = d / "long12.yaml";
  {
    std::string text = slurp(short_run);
    text.replace(text.find("max_steps: 8"), 12, "max_steps: 12");
    std::ofstream(cfg) << text;
  }
  ASSERT_EQ(wait_exit(spawn({kCli, "train", short_run, "-o", d / "run"}, d / "a.log")), 0) << slurp(d / "a.log");
  ASSERT_EQ(wait_exit(spawn({kCli, "train", cfg, "-o", d / "run", "--nproc", "2", "--resume"}, d / "b.log")), 0)
      << slurp(d / "b.log");
  EXPECT_NE(slurp(d / "b.log").find("resumed train at step 6"), std::string::npos) << slurp(d / "b.log");
  ASSERT_EQ(wait_exit(spawn({kCli, "train", cfg, "-o", d / "one"}, d / "c.log")), 0) << slurp(d / "c.log");
  EXPECT_LE(max_difference(d / "run", d / "one", {"modules/m/adapter_model.safetensors", "heads.safetensors"}), 1e-5);
}
