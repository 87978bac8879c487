// `modula experiment NAME --quick` on the installed package data (scripts/setup.sh --tests):
// each runs in seconds and its numbers are checked where a broken implementation would
// show (frozen per-task modules, learning above chance, merges between their references).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>

#include "modula/experiment/experiment.h"
#include "modula/io/safetensors.h"
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
    if (m.method.rfind("merged:", 0) == 0) {
      EXPECT_LT(acc, alone + 0.05) << m.method;
    }
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

namespace {

std::map<std::string, torch::Tensor> tensors(const std::string& folder) {
  auto f = modula::io::SafetensorsFile::open(fs::join(folder, "adapter_model.safetensors"));
  std::map<std::string, torch::Tensor> out;
  for (const auto& k : f.keys()) out[k] = f.get(k).clone();
  return out;
}

}  // namespace

TEST(Experiment, GeneralisationQuick) {
  // At the quick size nothing learns the topic pairs (the backbone is barely pretrained);
  // checked is what a broken adaptation path would break.
  const auto r = quick("generalisation", 1);
  ASSERT_EQ(r.methods.size(), 7u);
  const std::string runs = fs::join(r.output, "runs/seed0");
  // Held-out tasks are new pairs of topics that each appear in training pairs.
  auto run = modula::parse_json(fs::read_file(fs::join(runs, "per-task/result.json")));
  std::map<std::string, int> seen;
  for (const auto& [task, metrics] : run["eval"].items()) {
    const auto bar = task.find('|');
    ++seen[task.substr(0, bar)], ++seen[task.substr(bar + 1)];
  }
  for (const auto& t : r.tasks) {
    EXPECT_FALSE(run["eval"].contains(t)) << t << " is also a training task";
    const auto bar = t.find('|');
    EXPECT_GE(seen[t.substr(0, bar)], 2) << t;
    EXPECT_GE(seen[t.substr(bar + 1)], 2) << t;
  }
  // MHR-z trains only the held-out tasks' routing rows: the skills and the training tasks'
  // rows come out bit-identical, and some held-out row moved.
  const auto before = tensors(fs::join(runs, "poly-sigma/modules/poly"));
  const auto after = tensors(fs::join(runs, "poly-sigma-mhr-z/modules/poly"));
  const int64_t K = static_cast<int64_t>(seen.size() * (seen.size() - 1) / 2) - static_cast<int64_t>(r.tasks.size());
  ASSERT_EQ(before.size(), after.size());
  bool moved = false;
  for (const auto& [key, t] : before) {
    if (key.find("module_logits") == std::string::npos) {
      EXPECT_TRUE(torch::equal(t, after.at(key))) << key;
      continue;
    }
    EXPECT_TRUE(torch::equal(t.slice(0, 0, K), after.at(key).slice(0, 0, K))) << key;
    moved = moved || !torch::equal(t.slice(0, K), after.at(key).slice(0, K));
  }
  EXPECT_TRUE(moved);
  // The σ-routed folder records routing_noise false and the LoRAs' α; PEFT's carries neither.
  auto config = [&](const std::string& run_name) {
    return modula::parse_json(fs::read_file(fs::join(runs, run_name + "/modules/poly/adapter_config.json")));
  };
  EXPECT_EQ(config("poly-sigma").at("routing_noise"), false);
  EXPECT_EQ(config("poly-sigma").at("lora_alpha"), 4.0);  // 2 r at the quick rank 2
  EXPECT_FALSE(config("poly-peft").contains("routing_noise"));
  EXPECT_FALSE(config("poly-peft").contains("lora_alpha"));
  EXPECT_TRUE(config("poly-scaled").contains("lora_alpha"));
  for (const auto& m : r.methods)
    for (const auto& [task, acc] : m.task_accuracy) EXPECT_TRUE(acc[0] >= 0 && acc[0] <= 1) << m.method << task;
  EXPECT_EQ(r.findings.size(), 4u);
}

TEST(Experiment, MoeQuick) {
  const auto r = quick("moe", 1);
  ASSERT_EQ(r.methods.size(), 9u);
  const double dense_total = static_cast<double>(r.methods[0].trainable_parameters);
  for (size_t k = 1; k < r.methods.size(); ++k) {
    const auto& m = r.methods[k];
    // Equal total: within the routers' parameters of the dense model; equal active: more.
    if (m.method.find("equal total") != std::string::npos) {
      EXPECT_NEAR(m.trainable_parameters / dense_total, 1.0, 0.02) << m.method;
    }
    if (m.method.find("equal active") != std::string::npos) {
      EXPECT_GT(m.trainable_parameters, dense_total) << m.method;
    }
  }
  for (const auto& m : r.methods) {
    // Every variant learns: below the uniform model's perplexity (the vocabulary) and lower
    // at the end than half-way.
    const double end = mean_metric(r, m.method, "held-out perplexity");
    EXPECT_TRUE(std::isfinite(end)) << m.method;
    EXPECT_LT(end, 400) << m.method;
    EXPECT_LT(end, mean_metric(r, m.method, "perplexity at half the steps")) << m.method;
    EXPECT_GT(mean_metric(r, m.method, "train seconds"), 0) << m.method;
  }
  ASSERT_EQ(r.charts.size(), 2u);
  EXPECT_EQ(r.charts[0].series.size(), 9u);
  EXPECT_EQ(r.findings.size(), 3u);
}
