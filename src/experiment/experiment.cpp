// `modula experiment`: options, the dispatch, statistics, and the table / JSON / report of
// a result (experiment.h).
#include "modula/experiment/experiment.h"

#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>

#include "experiment/internal.h"
#include "modula/util/error.h"
#include "modula/util/fs.h"

namespace modula::experiment {
namespace {

constexpr std::string_view kExperimentTag = "experiment";

}  // namespace

void ExperimentOptions::validate() const {
  const auto names = experiment_names();
  check(std::find(names.begin(), names.end(), name) != names.end(), kExperimentTag,
        "unknown experiment '" + name + "' (known: continual, interference, merging, mad-x, generalisation, moe)");
  check(seeds >= 0 && seeds <= 100, kExperimentTag,
        "seeds must be in [1, 100] (0: the default), got " + std::to_string(seeds));
  check(steps >= 0 && steps <= 1000000, kExperimentTag,
        "steps must be in [1, 1000000] (0: the default), got " + std::to_string(steps));
  check(!output.empty(), kExperimentTag, "output must name a folder");
  check(threads >= 0 && threads <= 1024, kExperimentTag,
        "threads must be in [0, 1024], got " + std::to_string(threads));
}

std::vector<std::string> experiment_names() {
  return {"continual", "interference", "merging", "mad-x", "generalisation", "moe"};
}

double mean_of(const std::vector<double>& v) {
  double s = 0;
  int64_t n = 0;
  for (double x : v)
    if (std::isfinite(x)) s += x, ++n;
  return n ? s / static_cast<double>(n) : NAN;
}

double std_of(const std::vector<double>& v) {
  const double m = mean_of(v);
  double s = 0;
  int64_t n = 0;
  for (double x : v)
    if (std::isfinite(x)) s += (x - m) * (x - m), ++n;
  return n == 0 ? NAN : n == 1 ? 0.0 : std::sqrt(s / static_cast<double>(n - 1));
}

double backward_transfer(const std::vector<std::vector<double>>& a) {
  const size_t T = a.size();
  if (T < 2) return NAN;
  double s = 0;
  for (size_t j = 0; j + 1 < T; ++j) s += a[T - 1][j] - a[j][j];
  return s / static_cast<double>(T - 1);
}

double forgetting(const std::vector<std::vector<double>>& a) {
  const size_t T = a.size();
  if (T < 2) return NAN;
  double s = 0;
  for (size_t j = 0; j + 1 < T; ++j) {
    double best = -INFINITY;
    for (size_t t = j; t + 1 < T; ++t) best = std::max(best, a[t][j]);
    s += best - a[T - 1][j];
  }
  return s / static_cast<double>(T - 1);
}

namespace detail {

std::string fmt(double v, int precision) {
  if (!std::isfinite(v)) return "–";
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", precision, v);
  return buf;
}

std::string mean_std(const std::vector<double>& v) {
  const double m = mean_of(v);
  if (!std::isfinite(m)) return "–";
  return fmt(m) + " ± " + fmt(std_of(v));
}

}  // namespace detail

const MethodResult& ExperimentResult::method(const std::string& name) const {
  for (const auto& m : methods)
    if (m.method == name) return m;
  throw_error(kExperimentTag, "experiment '" + this->name + "' has no method '" + name + "'");
}

train::Table ExperimentResult::table() const {
  train::Table t;
  t.title = title + " (mean ± std over " + std::to_string(seeds) + " seeds" + (quick ? ", quick" : "") + ")";
  t.columns = {"method", "trainable params"};
  for (const auto& m : metrics) t.columns.push_back(m);
  for (const auto& task : tasks) t.columns.push_back(task);
  for (const auto& m : methods) {
    std::vector<std::string> row = {m.method, std::to_string(m.trainable_parameters)};
    for (const auto& k : metrics)
      row.push_back(detail::mean_std(m.metrics.count(k) ? m.metrics.at(k) : std::vector<double>{}));
    for (const auto& task : tasks)
      row.push_back(detail::mean_std(m.task_accuracy.count(task) ? m.task_accuracy.at(task) : std::vector<double>{}));
    t.rows.push_back(row);
  }
  return t;
}

nlohmann::json ExperimentResult::to_json() const {
  nlohmann::json j = {{"name", name},   {"title", title},           {"claim", claim},     {"design", design},
                      {"tasks", tasks}, {"task_notes", task_notes}, {"metrics", metrics}, {"findings", findings},
                      {"seeds", seeds}, {"quick", quick},           {"seconds", seconds}};
  auto finite = [](const std::vector<double>& v) {
    nlohmann::json a = nlohmann::json::array();
    for (double x : v) a.push_back(std::isfinite(x) ? nlohmann::json(x) : nlohmann::json());
    return a;
  };
  for (const auto& m : methods) {
    nlohmann::json mj = {
        {"method", m.method}, {"trainable_parameters", m.trainable_parameters}, {"seconds", m.seconds}};
    for (const auto& [k, v] : m.metrics)
      mj["metrics"][k] = {{"per_seed", finite(v)},
                          {"mean", std::isfinite(mean_of(v)) ? nlohmann::json(mean_of(v)) : nlohmann::json()},
                          {"std", std::isfinite(std_of(v)) ? nlohmann::json(std_of(v)) : nlohmann::json()}};
    for (const auto& [k, v] : m.task_accuracy) mj["task_accuracy"][k] = finite(v);
    if (!m.accuracy_matrix.empty()) mj["accuracy_matrix"] = m.accuracy_matrix;
    j["methods"].push_back(mj);
  }
  for (const auto& c : charts) {
    nlohmann::json cj = {{"title", c.title}, {"x", c.x_label}, {"y", c.y_label}};
    for (const auto& s : c.series) cj["series"].push_back({{"name", s.name}, {"x", finite(s.x)}, {"y", finite(s.y)}});
    j["charts"].push_back(cj);
  }
  return j;
}

train::Report ExperimentResult::report() const {
  train::Report rep("modula experiment " + name);
  rep.heading(title);
  rep.paragraph("Claim under test: " + claim);
  rep.heading("Design: what this can and cannot show");
  for (const auto& d : design) rep.paragraph(d);
  for (const auto& t : tasks) rep.paragraph(t + ": " + task_notes.at(t));
  rep.heading("Results");
  rep.add(table());
  for (const auto& c : charts) rep.add(c);
  if (!tasks.empty()) add_matrices(rep);
  rep.heading("What it shows");
  for (const auto& f : findings) rep.paragraph(f);
  rep.paragraph("Run: modula experiment " + name + (quick ? " --quick" : "") + " --seeds " + std::to_string(seeds) +
                "; " + detail::fmt(seconds, 0) + " s.");
  return rep;
}

void ExperimentResult::add_matrices(train::Report& rep) const {
  // Mean final accuracy per task and method.
  train::Matrix acc{"final accuracy by task (mean over seeds)", {}, tasks, {}, "", 0.0, 1.0, 3};
  for (const auto& m : methods) {
    acc.row_labels.push_back(m.method);
    std::vector<double> row;
    for (const auto& t : tasks) row.push_back(m.task_accuracy.count(t) ? mean_of(m.task_accuracy.at(t)) : NAN);
    acc.values.push_back(row);
  }
  rep.add(acc);
  // Continual: the mean accuracy matrix of each sequential method.
  for (const auto& m : methods) {
    if (m.accuracy_matrix.empty()) continue;
    train::Matrix mm{
        m.method + ": accuracy after each task (rows) on each task (columns)", {}, tasks, {}, "", 0.0, 1.0, 3};
    const size_t T = m.accuracy_matrix[0].size();
    for (size_t t = 0; t < T; ++t) {
      mm.row_labels.push_back("after " + tasks[t]);
      std::vector<double> row;
      for (size_t j = 0; j < tasks.size(); ++j) {
        std::vector<double> v;
        for (const auto& s : m.accuracy_matrix) v.push_back(s[t][j]);
        row.push_back(mean_of(v));
      }
      mm.values.push_back(row);
    }
    rep.add(mm);
  }
}

ExperimentResult run_experiment(const ExperimentOptions& options, const Progress& progress) {
  ExperimentOptions o = options;
  if (o.seeds == 0) o.seeds = o.quick ? 2 : 3;
  o.validate();
  if (o.threads > 0) torch::set_num_threads(o.threads);
  const auto t0 = std::chrono::steady_clock::now();
  ExperimentResult r = o.name == "continual"      ? detail::continual(o, progress)
                       : o.name == "interference" ? detail::interference(o, progress)
                       : o.name == "merging"      ? detail::merging(o, progress)
                       : o.name == "mad-x"        ? detail::madx(o, progress)
                       : o.name == "moe"          ? detail::moe(o, progress)
                                                  : detail::generalisation(o, progress);
  r.seeds = o.seeds;
  r.quick = o.quick;
  r.seconds = detail::seconds_since(t0);
  r.output = fs::join(o.output, o.name);
  fs::make_dirs(r.output);
  fs::write_file(fs::join(r.output, "result.json"), r.to_json().dump(2) + "\n");
  r.report().write_html(fs::join(r.output, "report.html"));
  return r;
}

}  // namespace modula::experiment
