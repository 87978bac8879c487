// The quickstart main job, tiny variant: the table's structure, per-task modules forget
// exactly nothing, the report and the modules are written, bad options are named.
#include "modula/train/quickstart.h"
#include "modula/util/fs.h"
#include "support/temp_dir.h"

#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

using namespace modula::train;

TEST(Quickstart, TinyRunTableAndZeroForgettingForModules) {
  modula::testing::TempDir dir;
  torch::set_num_threads(1);  // as the CLI: the model is tiny, threads only add overhead
  auto o = QuickstartOptions::tiny().output(dir.path);
  std::vector<std::string> lines;
  auto r = run_quickstart(o, [&](const std::string& s) { lines.push_back(s); });
  EXPECT_FALSE(lines.empty());

  auto table = r.summary_table();
  ASSERT_EQ(table.columns.size(), 6u);
  EXPECT_EQ(table.columns[4], "forgetting");
  ASSERT_EQ(r.experiments.size(), 2u);
  const auto& cl = r.experiments[0];
  EXPECT_EQ(cl.key, "continual");
  EXPECT_EQ(table.rows.size(), cl.methods.size() + r.experiments[1].methods.size());
  const size_t K = o.continual_tasks().size();

  // (a) per-task modules: each task's accuracy is the same at every later stage, bit for bit.
  const auto& per_task = cl.method("per-task LoRA");
  ASSERT_EQ(per_task.accuracy.size(), K);
  for (size_t t = 0; t < K; ++t) {
    ASSERT_EQ(per_task.accuracy[t].size(), K);
    for (size_t j = 0; j < K; ++j) {
      if (j > t) EXPECT_TRUE(std::isnan(per_task.accuracy[t][j]));  // not trained yet
      else EXPECT_EQ(per_task.accuracy[t][j], per_task.accuracy[j][j]);
    }
  }
  EXPECT_EQ(per_task.forgetting, 0.0);
  // Even the tiny run learns: the zero is not that of a model that knows nothing, and full
  // fine-tuning on the second task loses the first (the claim, at toy scale).
  EXPECT_GT(per_task.accuracy[0][0], 0.5);
  EXPECT_GT(cl.method("full fine-tuning").forgetting, 0.3);
  EXPECT_EQ(table.rows[0][1], "per-task LoRA");
  EXPECT_EQ(table.rows[0][4], "0.000");
  for (const auto& m : cl.methods) {
    EXPECT_GE(m.forgetting, -1.0);
    EXPECT_LE(m.forgetting, 1.0);
    EXPECT_FALSE(m.loss.loss.empty());
    EXPECT_GT(m.trainable_parameters, 0);
  }
  // Full fine-tuning trains the whole backbone; a per-task LoRA is a small fraction of it.
  EXPECT_EQ(cl.method("full fine-tuning").trainable_parameters, r.backbone_parameters);
  EXPECT_LT(per_task.trainable_parameters / static_cast<int64_t>(K), r.backbone_parameters / 4);

  // (b) one row per method, accuracies in [0, 1] from the evaluation.
  const auto& inter = r.experiments[1];
  EXPECT_EQ(inter.key, "interference");
  for (const auto& m : inter.methods) {
    ASSERT_EQ(m.accuracy.size(), 1u);
    for (double a : m.accuracy[0]) {
      EXPECT_GE(a, 0.0);
      EXPECT_LE(a, 1.0);
    }
  }
  EXPECT_EQ(inter.method("shared LoRA (2x rank)").trainable_parameters, inter.method("per-task LoRA").trainable_parameters);

  // Written: report with charts, the backbone, one module folder per task.
  std::ifstream f(dir / "report.html");
  std::stringstream html;
  html << f.rdbuf();
  EXPECT_NE(html.str().find("<svg"), std::string::npos);
  EXPECT_NE(html.str().find("(a) continual learning"), std::string::npos);
  EXPECT_TRUE(modula::fs::is_file(dir / "backbone/model.safetensors"));
  for (const auto& t : o.continual_tasks()) EXPECT_TRUE(modula::fs::is_file(dir / ("modules/" + t + "/adapter_config.json")));
}

TEST(Quickstart, ForgettingFormula) {
  // Tasks A, B, C; rows: after A, after B, after C.
  std::vector<std::vector<double>> a = {{0.9, NAN, NAN}, {0.5, 0.8, NAN}, {0.3, 0.6, 1.0}};
  EXPECT_NEAR(average_forgetting(a), ((0.9 - 0.3) + (0.8 - 0.6)) / 2, 1e-12);
  EXPECT_EQ(average_forgetting({{0.7}}), 0.0);
}

TEST(Quickstart, BadOptionsAreNamed) {
  auto expect_message = [](const QuickstartOptions& o, const std::string& part) {
    try {
      o.validate();
      FAIL() << "no exception for " << part;
    } catch (const std::invalid_argument& e) {
      EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
    }
  };
  expect_message(QuickstartOptions().continual_tasks({"reverse", "flip"}), "'flip'");
  expect_message(QuickstartOptions().continual_tasks({"reverse"}), "continual_tasks");
  expect_message(QuickstartOptions().interference_tasks({"sort", "sort"}), "listed twice");
  expect_message(QuickstartOptions().experiments({"moe"}), "'moe'");
  expect_message(QuickstartOptions().hidden_size(30).num_heads(4), "hidden_size");
  expect_message(QuickstartOptions().pretrain_tasks({"sort+shift"}), "primitive");
  expect_message(QuickstartOptions().finetune_steps(0), "finetune_steps");
}
