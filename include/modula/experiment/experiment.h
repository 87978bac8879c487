// `modula experiment NAME`: the survey's claims tested on real text from packages. Each
// experiment is a set of `modula train` runs (train/trainer.h, the one training loop) on
// the same data and budget per method, repeated over seeds (mean ± std), with a table, a
// JSON file and an HTML report; the findings are computed from the numbers, so they say
// what the run showed whether or not it agrees with the survey.
//
//   modula::experiment::ExperimentOptions o;
//   o.name = "continual";
//   auto r = modula::experiment::run_experiment(o, [](const std::string& line) { ... });
//   std::cout << modula::train::format_table(r.table());
//
// Experiments (docs/experiments.md gives each design and what it can and cannot show):
//   continual     four compatible tasks in sequence: full fine-tuning, one shared LoRA,
//                 per-task LoRA, joint multi-task LoRA (upper bound); accuracy matrix,
//                 average accuracy, forgetting, backward transfer.
//   interference  the same tasks trained jointly at equal trainable parameters: one shared
//                 LoRA, per-task LoRA, learned soft routing over LoRAs, Polytropon.
//   merging       per-task LoRAs trained separately, merged post hoc (linear, task
//                 arithmetic, TIES, DARE) vs each alone vs multi-task training.
//   mad-x         zero-shot cross-lingual transfer: an English task adapter alone vs
//                 stacked on a language adapter swapped for the target language's.
//   generalisation  Polytropon skills trained on many topic-pair tasks, adapted to held-out
//                 pairs from a few examples (MHR-z, MHR-μ) vs a shared LoRA fine-tuned and a
//                 LoRA from scratch; PEFT's sampled routing vs σ routing in training.
//   moe           causal-LM pretraining on English fortunes: dense FFN vs top-1/top-2 of 4/8
//                 experts at equal active and at equal total parameters; held-out perplexity
//                 by step and by wall time.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "modula/experiment/corpora.h"
#include "modula/train/report.h"

namespace modula::experiment {

struct ExperimentOptions {
  std::string name;                          // one of experiment_names()
  bool quick = false;                        // the test-suite size (seconds)
  int64_t seeds = 0;                         // repetitions (0 = 3, quick: 2)
  int64_t steps = 0;                         // optimizer steps per task (0 = the experiment's default)
  std::string output = "build/experiments";  // <output>/<name>/{result.json,report.html,runs/}; the backbone is shared
  DataSources data = DataSources::detect();
  int threads = 0;        // 0 = leave torch's setting
  void validate() const;  // std::invalid_argument naming the field
};

// One method's numbers, each metric per seed.
struct MethodResult {
  std::string method;
  int64_t trainable_parameters = 0;
  std::map<std::string, std::vector<double>> metrics;             // "average accuracy" -> [seed]
  std::map<std::string, std::vector<double>> task_accuracy;       // task -> [seed] (final)
  std::vector<std::vector<std::vector<double>>> accuracy_matrix;  // continual: [seed][after task][task]
  double seconds = 0;                                             // all seeds
};

struct ExperimentResult {
  std::string name, title;
  std::string claim;                // the survey's claim under test, one sentence
  std::vector<std::string> design;  // what the comparison can and cannot show
  std::vector<std::string> tasks;
  std::map<std::string, std::string> task_notes;  // task -> source, classes, sizes, chance
  std::vector<std::string> metrics;               // columns, in order
  std::vector<MethodResult> methods;
  std::vector<std::string> findings;     // computed from the numbers
  std::vector<train::LineChart> charts;  // curves (moe: perplexity by step and by wall time)
  int64_t seeds = 0;
  bool quick = false;
  double seconds = 0;
  std::string output;  // folder written

  const MethodResult& method(const std::string& name) const;  // throws naming it
  // Method | trainable params | each metric "mean ± std" | each task's final accuracy.
  train::Table table() const;
  nlohmann::json to_json() const;
  train::Report report() const;

 private:
  void add_matrices(train::Report& rep) const;  // per-task accuracy and continual matrices
};

using Progress = std::function<void(const std::string&)>;

std::vector<std::string> experiment_names();
// Runs one experiment, writes <output>/<name>/result.json and report.html. Throws
// DataMissing naming the package when data is not installed, std::invalid_argument for
// bad options.
ExperimentResult run_experiment(const ExperimentOptions& options, const Progress& progress = {});

// Mean and sample standard deviation (0 for one value); NaN for none.
double mean_of(const std::vector<double>& v);
double std_of(const std::vector<double>& v);
// Backward transfer (Lopez-Paz & Ranzato 2017): mean_{j<T-1} a[T-1][j] - a[j][j].
double backward_transfer(const std::vector<std::vector<double>>& accuracy);
// Forgetting (Chaudhry et al. 2018): mean_{j<T-1} max_{t<T-1} a[t][j] - a[T-1][j].
double forgetting(const std::vector<std::vector<double>>& accuracy);

}  // namespace modula::experiment
