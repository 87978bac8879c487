// modula train CONFIG: one config-driven run (backbone + modules + tasks + optimisation).
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <iostream>
#include <map>
#include <sstream>

#include "commands.h"
#include "modula/train/report.h"
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

int run_training(const train::TrainConfig& config, bool resume) {
  const bool tty = ::isatty(::fileno(stderr));
  std::map<std::string, train::LineSeries> curves;  // training loss by phase
  train::Callbacks cb;
  cb.on_step = [&](const train::StepInfo& s) {
    auto& c = curves[s.phase];
    c.name = s.phase;
    c.x.push_back(static_cast<double>(s.step));
    c.y.push_back(s.loss);
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
                << fmt(s.tokens_per_s, 5) << " eta " << clock(s.eta_s) << "\n";
    }
  };
  cb.on_eval = [&](const train::EvalInfo& e) {
    if (tty) std::fprintf(stderr, "\r\033[K");
    std::cerr << "eval " << e.phase << " step " << e.step << " task " << e.task;
    for (const auto& [k, v] : e.metrics)
      if (k != "examples") std::cerr << " " << k << " " << fmt(v);
    std::cerr << "\n";
  };
  cb.on_message = [&](const std::string& m) {
    if (tty) std::fprintf(stderr, "\r\033[K");
    std::cerr << m << "\n";
  };

  train::Trainer trainer(config);
  auto r = trainer.run(cb, resume);

  train::Report report("modula train: " + config.source);
  report.paragraph("Output: " + r.output + (r.resumed ? " (resumed from a checkpoint)" : ""));
  std::vector<train::LineSeries> series;
  for (auto& kv : curves) series.push_back(kv.second);
  if (!series.empty()) report.add(train::LineChart{"training loss", "step", "loss", series});
  if (!r.eval.empty()) {
    train::Table t{"evaluation", {"task", "metric", "value"}, {}, ""};
    for (const auto& [task, m] : r.eval)
      for (const auto& [k, v] : m) t.rows.push_back({task, k, fmt(v)});
    report.add(t);
    std::cout << train::format_table(t);
  }
  auto matrix = [&](const std::string& title, const train::ContinualResult& c) {
    train::Matrix m{
        title,
        {},
        c.tasks,
        c.accuracy,
        "average accuracy " + fmt(c.average_accuracy) + ", average forgetting " + fmt(c.average_forgetting)};
    for (const auto& t : c.tasks) m.row_labels.push_back("after " + t);
    report.add(m);
    std::cout << train::format_matrix(m) << m.caption << "\n";
  };
  if (r.continual) matrix("continual learning: accuracy (task x time), one module per task", *r.continual);
  if (r.baseline) matrix("full fine-tuning baseline: accuracy (task x time)", *r.baseline);
  if (!r.continual) {
    std::cout << "trainable parameters " << r.trainable_parameters << " of " << r.total_parameters << "\n";
    std::cout << "steps " << r.steps << " final loss " << fmt(r.final_loss)
              << (r.stopped_early ? " (stopped early)" : "") << "\n";
  }
  report.write_html(r.output + "/report.html");
  std::cout << "wrote " << r.output << " (metrics.jsonl, result.json, report.html)\n";
  return 0;
}

void add_train(CLI::App& app) {
  auto* cmd = app.add_subcommand("train", "Train modules (and heads) from a YAML/JSON run config");
  static std::string config_path, output;
  static bool resume = false;
  cmd->add_option("config", config_path, "Run config (.yaml/.yml/.json)")->required();
  cmd->add_option("--output,-o", output, "Output folder (overrides the config's)");
  cmd->add_flag("--resume", resume, "Continue from the newest complete checkpoint in OUTPUT/checkpoints");
  cmd->callback([] {
    auto config = train::load_train_config(config_path);
    if (!output.empty()) config.output = output;
    run_training(config, resume);
  });
}

}  // namespace modula::cli
