// `modula experiment NAME --quick` on the installed package data (scripts/setup.sh --tests):
// each runs in seconds and its numbers are checked where a broken implementation would
// show (frozen per-task modules, learning above chance, merges between their references).
#include <gtest/gtest.h>

#include <cmath>

#include "modula/experiment/experiment.h"
#include "modula/util/fs.h"
#include "modula/util/json.h"

namespace ex = modula::experiment;
namespace fs = modula::fs;

namespace {

// One output folder for the three: the pretrained backbone is built once and reused.
const std::string& output() {
  static const std::string dir = fs::make_temp_dir("modula-experiment-test");
  return dir;
}

ex::ExperimentResult quick(const std::string& name, int64_t seeds) {
  ex::ExperimentOptions o;
  o.name = name;
  o.quick = true;
  o.seeds = seeds;
  o.output = output();
  return ex::run_experiment(o);  // DataMissing fails the test: the suite's setup installs the data
}

double mean_metric(const ex::ExperimentResult& r, const std::string& method, const std::string& metric) {
  return ex::mean_of(r.method(method).metrics.at(metric));
}

double chance(const std::string& task) { return task == "language" ? 1.0 / 7 : task == "topic" ? 0.25 : 0.5; }

}  // namespace

TEST(Experiment, ContinualQuick) {
  const auto r = quick("continual", 2);
  ASSERT_EQ(r.tasks, (std::vector<std::string>{"language", "spam", "reuters", "topic"}));
  // Per-task modules and heads are frozen after their task: every column of every seed's
  // matrix is constant from its diagonal down (exactly), so forgetting and BWT are 0.
  const auto& per_task = r.method("per-task LoRA");
  ASSERT_EQ(per_task.accuracy_matrix.size(), 2u);
  for (const auto& a : per_task.accuracy_matrix)
    for (size_t j = 0; j < a.size(); ++j)
      for (size_t t = j + 1; t < a.size(); ++t) EXPECT_EQ(a[t][j], a[j][j]) << "task " << j << " after " << t;
  EXPECT_EQ(mean_metric(r, "per-task LoRA", "forgetting"), 0.0);
  // Joint training learns: language identification (7 classes) well above chance, and the
  // average above the average chance.
  const auto& joint = r.method("joint multi-task LoRA (upper bound)");
  EXPECT_GT(ex::mean_of(joint.task_accuracy.at("language")), chance("language") + 0.1);
  const double average_chance = (chance("language") + chance("spam") + chance("reuters") + chance("topic")) / 4;
  EXPECT_GT(mean_metric(r, "joint multi-task LoRA (upper bound)", "average accuracy"), average_chance + 0.05);
  // Full fine-tuning trains the backbone: far more parameters than the modules.
  EXPECT_GT(r.method("full fine-tuning (sequential)").trainable_parameters,
            10 * r.method("shared LoRA (sequential)").trainable_parameters);
  // Forgetting is what the matrices say (recomputed here from the JSON the CLI writes).
  const auto j = modula::parse_json(fs::read_file(fs::join(r.output, "result.json")));
  for (const auto& m : j["methods"])
    if (m.contains("accuracy_matrix")) {
      double f = 0;
      for (const auto& a : m["accuracy_matrix"]) f += ex::forgetting(a.get<std::vector<std::vector<double>>>());
      EXPECT_NEAR(m["metrics"]["forgetting"]["mean"].get<double>(), f / m["accuracy_matrix"].size(), 1e-9)
          << m["method"];
    }
  EXPECT_TRUE(fs::is_file(fs::join(r.output, "report.html")));
  EXPECT_EQ(r.findings.size(), 3u);
}

TEST(Experiment, InterferenceQuick) {
  const auto r = quick("interference", 1);
  ASSERT_EQ(r.methods.size(), 4u);
  // Equal budgets: every method within 30% of the per-task LoRAs' parameters.
  const double budget = static_cast<double>(r.methods[1].trainable_parameters);
  for (const auto& m : r.methods) EXPECT_NEAR(m.trainable_parameters / budget, 1.0, 0.3) << m.method;
  // Per-task modules learn language identification well above chance.
  EXPECT_GT(ex::mean_of(r.methods[1].task_accuracy.at("language")), chance("language") + 0.1);
}

TEST(Experiment, MergingQuick) {
  const auto r = quick("merging", 1);
  const double alone = mean_metric(r, "each adapter alone (own task)", "average accuracy");
  const double bare = mean_metric(r, "heads only (no adapter)", "average accuracy");
  EXPECT_GT(alone, bare + 0.05);  // the adapters matter, so a merge has something to keep
  for (const auto& m : r.methods) {
    const double acc = mean_metric(r, m.method, "average accuracy");
    EXPECT_TRUE(std::isfinite(acc) && acc >= 0 && acc <= 1) << m.method;
    // A merge of four adapters does not beat each adapter on its own task by a margin.
    if (m.method.rfind("merged:", 0) == 0) EXPECT_LT(acc, alone + 0.05) << m.method;
  }
}

TEST(Experiment, MadxQuick) {
  // At the quick size the backbone is barely pretrained and nothing learns the verse type
  // (docs/experiments.md); what is checked is the plumbing a broken implementation breaks.
  const auto r = quick("mad-x", 1);
  ASSERT_EQ(r.tasks, (std::vector<std::string>{"en", "es", "ru"}));
  const auto& madx = r.method("MAD-X: stacked, target language adapter");
  const auto& control = r.method("stacked, English language adapter kept (control)");
  // On English both evaluate stack(lang_en, task): the same model on the same verses.
  EXPECT_EQ(madx.task_accuracy.at("en"), control.task_accuracy.at("en"));
  EXPECT_EQ(madx.trainable_parameters, r.method("task adapter alone").trainable_parameters);
  for (const auto& m : r.methods)
    for (const auto& [lang, acc] : m.task_accuracy) {
      ASSERT_EQ(acc.size(), 1u);
      EXPECT_TRUE(acc[0] >= 0 && acc[0] <= 1) << m.method << " " << lang;
    }
  // The eval sets are the same verses in each language: 30 per type.
  for (const auto& t : r.tasks) EXPECT_NE(r.task_notes.at(t).find("60 held-out verses"), std::string::npos) << t;
}
