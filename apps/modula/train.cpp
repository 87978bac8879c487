// modula train CONFIG: one config-driven run (backbone + modules + tasks + optimisation).
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <sstream>

#include "commands.h"
#include "flags.h"
#include "modula/train/distributed.h"
#include "modula/train/report.h"
#include "modula/train/run_report.h"
#include "modula/util/fs.h"
#include "train_run.h"

namespace modula::cli {
namespace {

std::string clock(double s) {
  if (!std::isfinite(s) || s < 0) return "--:--";
  char buf[32];
  auto t = static_cast<long>(s);
  if (t >= 3600)
    std::snprintf(buf, sizeof buf, "%ld:%02ld:%02ld", t / 3600, t / 60 % 60, t % 60);
  else
    std::snprintf(buf, sizeof buf, "%02ld:%02ld", t / 60, t % 60);
  return buf;
}

std::string fmt(double v, int prec = 4) {
  std::ostringstream os;
  os.precision(prec);
  os << v;
  return os.str();
}

}  // namespace

int run_training(const train::TrainConfig& config, bool resume, std::shared_ptr<train::Distributed> dist,
                 const std::string& command) {
  const auto start = std::chrono::steady_clock::now();
  const bool tty = ::isatty(::fileno(stderr));
  const bool main_rank = !dist || dist->is_main();
  train::Callbacks cb;
  cb.on_step = [&](const train::StepInfo& s) {
    if (!main_rank) return;  // rank 0 reports for all
    if (tty) {
      const int width = 24;
      int filled = static_cast<int>(width * s.step / std::max<int64_t>(1, s.total_steps));
      std::fprintf(stderr, "\r\033[K%s [%s%s] %lld/%lld loss %.4f lr %.2e %.0f tok/s ETA %s", s.phase.c_str(),
                   std::string(filled, '#').c_str(), std::string(width - filled, '.').c_str(),
                   static_cast<long long>(s.step), static_cast<long long>(s.total_steps), s.loss, s.lr, s.tokens_per_s,
                   clock(s.eta_s).c_str());
      if (s.step == s.total_steps) std::fprintf(stderr, "\n");
    } else {
      std::cerr << s.phase << " step " << s.step << "/" << s.total_steps << " task " << s.task << " loss "
                << fmt(s.loss) << " lr " << fmt(s.lr, 3) << " grad_norm " << fmt(s.grad_norm, 3) << " tokens/s "
                << fmt(s.tokens_per_s, 5) << " eta " << clock(s.eta_s);
      if (dist) std::cerr << " allreduce_ms " << fmt(s.allreduce_s * 1000.0, 3);
      std::cerr << "\n";
    }
  };
  cb.on_eval = [&](const train::EvalInfo& e) {
    if (!main_rank) return;
    if (tty) std::fprintf(stderr, "\r\033[K");
    std::cerr << "eval " << e.phase << " step " << e.step << " task " << e.task;
    for (const auto& [k, v] : e.metrics)
      if (k != "examples") std::cerr << " " << k << " " << fmt(v);
    std::cerr << "\n";
  };
  cb.on_message = [&](const std::string& m) {
    if (!main_rank) return;
    if (tty) std::fprintf(stderr, "\r\033[K");
    std::cerr << m << "\n";
  };

  if (dist && main_rank)
    std::cerr << "distributed: " << dist->world_size() << " ranks, backend " << dist->backend() << "; global batch "
              << config.optim.batch_size << " x " << config.optim.grad_accum << " accumulation\n";
  train::Trainer trainer(config, {}, dist);
  auto r = trainer.run(cb, resume);
  if (!main_rank) return 0;

  if (!r.eval.empty()) {
    train::Table t{"evaluation", {"task", "metric", "value"}, {}, ""};
    for (const auto& [task, m] : r.eval)
      for (const auto& [k, v] : m) t.rows.push_back({task, k, fmt(v)});
    std::cout << train::format_table(t);
  }
  // task × time: a row per task, a column per point in time (format_matrix prints the caption).
  if (r.continual)
    std::cout << train::format_matrix(
        train::continual_matrix("continual learning: accuracy (task x time)", *r.continual));
  if (r.baseline)
    std::cout << train::format_matrix(
        train::continual_matrix("full fine-tuning baseline: accuracy (task x time)", *r.baseline));
  if (!r.continual) {
    std::cout << "trainable parameters " << r.trainable_parameters << " of " << r.total_parameters << "\n";
    std::cout << "steps " << r.steps << " final loss " << fmt(r.final_loss)
              << (r.stopped_early ? " (stopped early)" : "") << "\n";
  }
  train::RunReportOptions ro;
  ro.command = command;
  ro.wall_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  train::run_report(config, r, ro).write_html(r.output + "/report.html");
  std::cout << "wrote " << r.output << " (metrics.jsonl, metrics.csv, result.json, report.html)\n";
  return 0;
}

std::string resolved_output(const std::string& config_path, const std::string& output) {
  return output.empty() ? train::load_train_config(config_path).output : output;
}

void check_fresh_output(const std::string& output, bool overwrite) {
  if (overwrite) return;
  for (const char* f : {"metrics.jsonl", "checkpoints"})
    if (fs::exists(fs::join(output, f)))
      throw std::runtime_error("[train] " + output + " already holds a run (" + f +
                               "); pass --overwrite to replace it, --resume to continue it, or choose "
                               "another --output");
}

namespace {

std::string self_exe() {
  char buf[4096];
  ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n <= 0) throw std::runtime_error("[distributed] cannot find this program (/proc/self/exe) to start the ranks");
  return std::string(buf, static_cast<size_t>(n));
}

}  // namespace

void add_train(CLI::App& app) {
  auto* cmd = app.add_subcommand("train", "Train modules (and heads) from a YAML/JSON run config");
  static std::string config_path, output, device, backend = "auto", master_addr = "127.0.0.1";
  static bool resume = false, overwrite = false;
  static int nproc = 1, master_port = 0, threads = 0;
  static double timeout = 300;
  cmd->add_option("config", config_path, "Run config (.yaml/.yml/.json)")->required();
  flags::output(*cmd, output);
  cmd->add_flag("--resume", resume, "Continue from the newest complete checkpoint in OUTPUT/checkpoints");
  flags::overwrite(*cmd, overwrite)->excludes("--resume");
  flags::threads(*cmd, threads);
  flags::device(*cmd, device);
  cmd->add_option("--nproc", nproc,
                  "Data-parallel ranks to start on this machine (docs/distributed.md); under torchrun or "
                  "Slurm set RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT instead")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--backend", backend,
                  "Distributed backend: auto (nccl on CUDA when built with it, else gloo), gloo or nccl")
      ->check(CLI::IsMember({"auto", "gloo", "nccl"}))
      ->capture_default_str();
  cmd->add_option("--dist-timeout", timeout,
                  "Seconds a rank waits for the others (rendezvous, each all-reduce) before failing; env "
                  "MODULA_DIST_TIMEOUT")
      ->capture_default_str();
  cmd->add_option("--master-addr", master_addr, "With --nproc: the rendezvous address")->capture_default_str();
  cmd->add_option("--master-port", master_port, "With --nproc: the rendezvous port (default: a free one)");
  cmd->callback([cmd] {
    auto env = train::DistributedOptions::from_env();
    if (nproc > 1) {
      if (env)
        throw std::runtime_error(
            "[distributed] RANK/WORLD_SIZE are set: this process is already a rank; "
            "drop --nproc");
      train::LaunchOptions lo;
      lo.nproc = nproc, lo.master_addr = master_addr, lo.master_port = master_port;
      if (!resume) check_fresh_output(resolved_output(config_path, output), overwrite);
      lo.argv = {self_exe(), "train", config_path, "--backend", backend};
      if (!output.empty()) lo.argv.insert(lo.argv.end(), {"--output", output});
      // The ranks share the folder this process checked: rank 0 writes into it first.
      lo.argv.push_back(resume ? "--resume" : "--overwrite");
      if (threads > 0) lo.argv.insert(lo.argv.end(), {"--threads", std::to_string(threads)});
      if (!device.empty()) lo.argv.insert(lo.argv.end(), {"--device", device});
      if (cmd->count("--dist-timeout")) lo.argv.insert(lo.argv.end(), {"--dist-timeout", std::to_string(timeout)});
      train::launch_local(lo);
      return;
    }
    auto config = train::load_train_config(config_path);
    if (!output.empty()) config.output = output;
    if (!device.empty()) config.device = device;
    flags::apply_threads(threads);
    if (!resume && (!env || env->rank == 0)) check_fresh_output(config.output, overwrite);
    std::shared_ptr<train::Distributed> dist;
    if (env && env->world_size > 1) {
      if (cmd->count("--backend")) env->backend = backend;
      if (cmd->count("--dist-timeout")) env->timeout_s = timeout;
      if (config.device == "cuda") config.device = "cuda:" + std::to_string(env->local_rank);  // one GPU per rank
      dist = std::make_shared<train::Distributed>(*env, torch::Device(config.device));
    }
    run_training(config, resume, dist);
  });
}

}  // namespace modula::cli
