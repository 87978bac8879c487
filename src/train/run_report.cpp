// A training run's report from its metrics.jsonl and result (run_report.h).
#include "modula/train/run_report.h"

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "modula/train/run_output.h"
#include "modula/util/fs.h"
#include "svg_plot.h"

namespace modula::train {
namespace run_report_detail {  // named, so that a unity build's other files keep their names
namespace {

using json = nlohmann::json;
using svg::num;

// Series in order of first appearance, by name.
struct SeriesSet {
  std::vector<LineSeries> series;
  std::map<std::string, size_t> index;
  void add(const std::string& name, double x, double y) {
    auto [it, fresh] = index.emplace(name, series.size());
    if (fresh) series.push_back({name, {}, {}});
    series[it->second].x.push_back(x);
    series[it->second].y.push_back(y);
  }
  // Points in x order (points from several sources were appended per source).
  void sort() {
    for (auto& s : series) {
      std::vector<size_t> order(s.x.size());
      for (size_t i = 0; i < order.size(); ++i) order[i] = i;
      std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return s.x[a] < s.x[b]; });
      LineSeries sorted{s.name, {}, {}};
      for (size_t i : order) sorted.x.push_back(s.x[i]), sorted.y.push_back(s.y[i]);
      s = std::move(sorted);
    }
  }
};

// "continual/2" -> "continual"; "train" stays.
std::string stage_of(const std::string& phase) { return phase.substr(0, phase.find('/')); }

// A curve's name: the task, prefixed by the stage when the run has several stages.
std::string curve_name(const std::string& phase, const std::string& task, bool staged) {
  return staged ? stage_of(phase) + ": " + task : task;
}

struct PhaseStats {
  int64_t steps = 0;
  double elapsed = 0, tokens_per_s = 0;
};

struct Metrics {
  std::vector<json> steps, evals;
  std::vector<std::string> phases;  // in order
  std::map<std::string, PhaseStats> by_phase;
  bool staged = false;  // more than one stage (lt_sft + train, continual + baseline)
};

Metrics read_metrics(const std::string& path) {
  Metrics m;
  std::ifstream in(path);
  std::set<std::string> stages;
  for (std::string line; std::getline(in, line);) {
    auto j = json::parse(line, nullptr, false);
    if (j.is_discarded() || !j.is_object()) continue;
    const std::string type = j.value("type", "");
    if (type != "step" && type != "eval") continue;
    const std::string phase = j.value("phase", "train");
    stages.insert(stage_of(phase));
    if (type == "eval") {
      m.evals.push_back(j);
      continue;
    }
    m.steps.push_back(j);
    if (!m.by_phase.count(phase)) m.phases.push_back(phase);
    auto& p = m.by_phase[phase];
    p.steps = std::max(p.steps, j.value("step", int64_t{0}));
    p.elapsed = std::max(p.elapsed, j.value("elapsed_s", 0.0));
    if (j.contains("tokens_per_s") && j["tokens_per_s"].is_number()) p.tokens_per_s = j["tokens_per_s"].get<double>();
  }
  // Continual runs train one task per phase: the stage names the phase well enough.
  m.staged = stages.size() > 1 || stages.count("continual") || stages.count("baseline");
  return m;
}

double value(const json& j, const std::string& key) {
  return j.contains(key) && j[key].is_number() ? j[key].get<double>() : NAN;
}

std::string seconds(double s) {
  if (!std::isfinite(s)) return "–";
  if (s < 120) return num(s, 3) + " s";
  return num(s / 60, 3) + " min";
}

// Whole numbers above 100 without exponent (12345, not 1.234e+04).
std::string rate(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, v >= 100 ? "%.0f" : "%.3g", v);
  return buf;
}

// Keys in the order a config file is written (then the rest alphabetically).
const std::vector<std::string> kKeyOrder = {
    "name", "type",           "model",      "tokenizer", "init",       "init_std",  "output", "device",
    "seed", "train_backbone", "save_model", "modules",   "compose",    "metadata",  "tasks",  "train",
    "eval", "optim",          "multitask",  "continual", "checkpoint", "log_every", "config", "path"};

std::vector<std::string> ordered_keys(const json& v) {
  std::vector<std::string> keys;
  for (const auto& k : kKeyOrder)
    if (v.contains(k)) keys.push_back(k);
  for (const auto& [k, x] : v.items())
    if (std::find(kKeyOrder.begin(), kKeyOrder.end(), k) == kKeyOrder.end()) keys.push_back(k);
  return keys;
}

// The config as indented YAML-like text (display only).
std::string flow(const json& v) {
  if (v.is_string()) return v.get<std::string>().empty() ? "\"\"" : v.get<std::string>();
  if (v.is_array()) {
    std::string s = "[";
    for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + flow(v[i]);
    return s + "]";
  }
  if (v.is_object()) {
    std::string s = "{";
    bool first = true;
    for (const auto& k : ordered_keys(v)) s += (first ? "" : ", ") + k + ": " + flow(v[k]), first = false;
    return s + "}";
  }
  return v.dump();
}

void yaml(const json& v, const std::string& pad, const std::string& first, std::ostringstream& o) {
  bool first_line = true;
  for (const auto& k : ordered_keys(v)) {
    const json& x = v[k];
    o << (first_line ? first : pad) << k << ":";
    first_line = false;
    std::string f = flow(x);
    if (!x.is_structured() || f.size() + pad.size() + k.size() < 96) {
      o << " " << f << "\n";
    } else if (x.is_object()) {
      o << "\n";
      yaml(x, pad + "  ", pad + "  ", o);
    } else {
      o << "\n";
      for (const auto& e : x) {
        std::string fe = flow(e);
        if (!e.is_object() || fe.size() + pad.size() < 92)
          o << pad << "  - " << fe << "\n";
        else
          yaml(e, pad + "    ", pad + "  - ", o);
      }
    }
  }
}

void add_training_loss(Report& r, const Metrics& m, double smooth) {
  SeriesSet loss;
  double lo = INFINITY, hi = 0;
  for (const auto& j : m.steps) {
    double y = value(j, "loss");
    loss.add(curve_name(j.value("phase", "train"), j.value("task", ""), m.staged),
             static_cast<double>(j.value("global_step", j.value("step", int64_t{0}))), y);
    if (std::isfinite(y) && y > 0) lo = std::min(lo, y), hi = std::max(hi, y);
  }
  if (loss.series.empty()) return;
  r.heading("Training loss");
  LineChart c{"training loss by task (every step)", "step", "loss", loss.series};
  c.log_y = hi / lo > 30;  // spans decades (pretraining from random init)
  c.smooth = smooth;
  r.add(c);
}

void add_eval_curves(Report& r, const Metrics& m, const TrainConfig& config, const TrainResult& result) {
  const std::vector<std::pair<std::string, std::string>> metrics = {
      {"loss", "eval loss"}, {"accuracy", "accuracy"}, {"macro_f1", "macro-F1"}, {"perplexity", "perplexity"}};
  std::map<std::string, SeriesSet> by_metric;
  int64_t last = 0;
  for (const auto& j : m.evals) {
    const double x = static_cast<double>(j.value("global_step", j.value("step", int64_t{0})));
    last = std::max(last, static_cast<int64_t>(x));
    for (const auto& [key, label] : metrics)
      if (std::isfinite(value(j, key)))
        by_metric[key].add(curve_name(j.value("phase", "train"), j.value("task", ""), m.staged), x, value(j, key));
  }
  // Continual runs: every task's accuracy after each task's phase (the matrix over time).
  const auto steps = static_cast<double>(config.optim.max_steps);
  const auto T = static_cast<double>(config.tasks.size());
  for (const auto* c : {result.continual ? &*result.continual : nullptr, result.baseline ? &*result.baseline : nullptr})
    if (c)
      for (size_t t = 0; t < c->accuracy.size(); ++t)
        for (size_t j = 0; j < c->accuracy[t].size() && j < c->tasks.size(); ++j)
          if (std::isfinite(c->accuracy[t][j]))
            by_metric["accuracy"].add(curve_name(c == &*result.continual ? "continual" : "baseline", c->tasks[j], true),
                                      (c == &*result.continual ? 0 : T * steps) + static_cast<double>(t + 1) * steps,
                                      c->accuracy[t][j]);
  // The final evaluation closes each curve (a run with eval.every = 0 has only that point).
  if (!m.staged)
    for (const auto& [task, values] : result.eval) {
      const auto x = static_cast<double>(std::max<int64_t>(result.steps, last));
      for (const auto& [key, label] : metrics) {
        auto it = values.find(key);
        if (it == values.end() || !std::isfinite(it->second)) continue;
        auto& set = by_metric[key];
        auto s = set.index.find(task);
        if (s != set.index.end() && !set.series[s->second].x.empty() && set.series[s->second].x.back() >= x) continue;
        set.add(task, x, it->second);
      }
    }
  if (by_metric.empty() && result.eval.empty()) return;
  r.heading("Evaluation");
  for (const auto& [key, label] : metrics) {
    auto it = by_metric.find(key);
    if (it == by_metric.end()) continue;
    it->second.sort();
    LineChart c{label + " by task", "step", label, it->second.series};
    c.markers = true;
    c.log_y = key == "perplexity";
    r.add(c);
  }
  if (!result.eval.empty()) {
    Table t{"final evaluation", {"task"}, {}, ""};
    std::vector<std::string> keys;  // the metrics in their usual order, then any others
    for (const auto& k : {"loss", "accuracy", "macro_f1", "perplexity", "examples"})
      for (const auto& [task, values] : result.eval)
        if (values.count(k) && std::find(keys.begin(), keys.end(), k) == keys.end()) keys.push_back(k);
    for (const auto& [task, values] : result.eval)
      for (const auto& [k, v] : values)
        if (std::find(keys.begin(), keys.end(), k) == keys.end()) keys.push_back(k);
    for (const auto& k : keys) t.columns.push_back(k);
    for (const auto& [task, values] : result.eval) {
      std::vector<std::string> row{task};
      for (const auto& k : keys) row.push_back(values.count(k) ? num(values.at(k), 4) : "–");
      t.rows.push_back(row);
    }
    r.add(t);
  }
}

void add_throughput(Report& r, const Metrics& m, const TrainResult& result, double wall_s) {
  Table t{"throughput and time",
          {"phase", "steps", "wall time", "tokens/s", "s/step"},
          {},
          "tokens/s: non-pad tokens per second over the phase; wall time excludes model loading and saving."};
  double total = 0;
  for (const auto& p : m.phases) {
    const auto& s = m.by_phase.at(p);
    total += s.elapsed;
    t.rows.push_back({p, std::to_string(s.steps), seconds(s.elapsed), rate(s.tokens_per_s),
                      s.steps ? num(s.elapsed / static_cast<double>(s.steps), 3) : "–"});
  }
  r.heading("Run");
  std::string summary = "Steps: " + std::to_string(result.steps);
  if (result.total_parameters > 0)
    summary += "; trainable parameters " + std::to_string(result.trainable_parameters) + " of " +
               std::to_string(result.total_parameters);
  if (!result.continual) summary += "; final training loss " + num(result.final_loss, 4);
  if (result.stopped_early) summary += " (stopped early)";
  summary += std::isfinite(wall_s) ? "; wall time " + seconds(wall_s) + " (loading, training, evaluating, saving)."
                                   : "; training time " + seconds(total) + ".";
  r.paragraph(summary);
  if (!t.rows.empty()) r.add(t);
}

}  // namespace
}  // namespace run_report_detail

Matrix continual_matrix(const std::string& title, const ContinualResult& c) {
  Matrix m{title, c.tasks, {}, {}, "", 0.0, 1.0, 2};
  for (const auto& t : c.tasks) m.col_labels.push_back("after " + t);
  m.values.assign(c.tasks.size(), std::vector<double>(c.accuracy.size(), NAN));
  for (size_t t = 0; t < c.accuracy.size(); ++t)
    for (size_t j = 0; j < c.accuracy[t].size() && j < c.tasks.size(); ++j) m.values[j][t] = c.accuracy[t][j];
  m.col_labels.resize(c.accuracy.size());
  m.caption = "rows: task evaluated; columns: time (after training each task in turn). Average accuracy " +
              svg::num(c.average_accuracy, 4) + ", average forgetting " + svg::num(c.average_forgetting, 4) + ".";
  return m;
}

Report run_report(const TrainConfig& config, const TrainResult& result, const RunReportOptions& options) {
  using namespace run_report_detail;
  std::string dir = result.output.empty() ? config.output : result.output;
  while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
  const std::string name = fs::filename(dir);
  Report r(options.title.empty() ? "modula " + options.command + " · " + name : options.title);
  r.paragraph("Config: " + config.source + ". Output: " + result.output +
              (result.resumed ? " (resumed from a checkpoint)." : "."));
  const Metrics m = read_metrics(fs::join(result.output, "metrics.jsonl"));
  add_throughput(r, m, result, options.wall_s);
  add_training_loss(r, m, options.smooth);
  add_eval_curves(r, m, config, result);
  if (result.continual || result.baseline) r.heading("Continual learning");
  if (result.continual) r.add(continual_matrix("accuracy (task × time), one module per task", *result.continual));
  if (result.baseline) r.add(continual_matrix("full fine-tuning baseline: accuracy (task × time)", *result.baseline));
  r.heading("Config");
  std::ostringstream o;
  yaml(to_json(config), "", "", o);
  r.code(o.str());
  return r;
}

}  // namespace modula::train
