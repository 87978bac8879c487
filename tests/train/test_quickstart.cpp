// The quickstart main job, tiny variant: the table's structure, per-task modules forget
// exactly nothing, the report and the modules are written, bad options are named.
#include <gtest/gtest.h>

#include <algorithm>
#include <fstream>
#include <sstream>

#include "modula/util/fs.h"
#include "quickstart/quickstart.h"
#include "support/temp_dir.h"

using namespace modula::train;

TEST(Quickstart, TinyRunTableAndZeroForgettingForModules) {
  modula::testing::TempDir dir;
  torch::set_num_threads(1);  // as the CLI: the model is tiny, threads only add overhead
  auto o = QuickstartOptions::tiny().output(dir.path);
  std::vector<std::string> lines;
  auto r = run_quickstart(o, [&](const std::string& s) { lines.push_back(s); });
  EXPECT_FALSE(lines.empty());

  auto table = r.summary_table();
  ASSERT_EQ(table.columns.size(), 8u);
  EXPECT_EQ(table.columns[6], "forgetting");
  ASSERT_EQ(r.experiments.size(), 4u);
  const auto& cl = r.experiments[0];
  EXPECT_EQ(cl.key, "continual");
  size_t rows = 0;
  for (const auto& e : r.experiments) rows += e.methods.size();
  EXPECT_EQ(table.rows.size(), rows);
  const size_t K = o.continual_tasks().size();

  // (a) per-task modules: each task's accuracy is the same at every later stage, bit for bit.
  const auto& per_task = cl.method("per-task LoRA");
  ASSERT_EQ(per_task.accuracy.size(), K);
  for (size_t t = 0; t < K; ++t) {
    ASSERT_EQ(per_task.accuracy[t].size(), K);
    for (size_t j = 0; j < K; ++j) {
      if (j > t)
        EXPECT_TRUE(std::isnan(per_task.accuracy[t][j]));  // not trained yet
      else
        EXPECT_EQ(per_task.accuracy[t][j], per_task.accuracy[j][j]);
    }
  }
  EXPECT_EQ(per_task.forgetting, 0.0);
  // Even the tiny run learns: the zero is not that of a model that knows nothing. Whether
  // full fine-tuning forgets is the experiment's outcome (the tasks are compatible, marked in
  // the text), not asserted; its number must be the formula's over its own matrix, and its
  // backbone must have moved: the first task's accuracy is not frozen as the module's is.
  EXPECT_GT(per_task.accuracy[0][0], 0.5);
  const auto& full = cl.method("full fine-tuning");
  EXPECT_DOUBLE_EQ(full.forgetting, modula::train::average_forgetting(full.accuracy));
  bool moved = false;
  for (size_t t = 1; t < K; ++t) moved |= full.accuracy[t][0] != full.accuracy[0][0];
  EXPECT_TRUE(moved) << "full fine-tuning's first-task accuracy never changed";
  EXPECT_EQ(table.rows[0][1], "per-task LoRA");
  EXPECT_EQ(table.rows[0][6], "0.000");
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
  EXPECT_EQ(inter.method("shared LoRA (2x rank)").trainable_parameters,
            inter.method("per-task LoRA").trainable_parameters);

  // (c) held-out compositions are never training tasks; every method has a real accuracy on
  // both; MHR-z changes only the held-out tasks' routing, so Poly's training-task accuracy,
  // measured again after the adaptation, is that of the unadapted model.
  const auto& gen = r.experiments[2];
  EXPECT_EQ(gen.key, "generalisation");
  ASSERT_EQ(gen.heldout_tasks, o.heldout_tasks());
  for (const auto& h : gen.heldout_tasks)
    EXPECT_EQ(std::count(o.generalisation_tasks().begin(), o.generalisation_tasks().end(), h), 0) << h;
  ASSERT_EQ(gen.tasks.size(), o.generalisation_tasks().size() + o.heldout_tasks().size());
  for (const auto& name :
       {"Polytropon + MHR-z", "Polytropon, uniform routing (no adaptation)", "shared LoRA", "per-task LoRA"}) {
    const auto& m = gen.method(name);
    ASSERT_EQ(m.accuracy.size(), 1u);
    ASSERT_EQ(m.accuracy[0].size(), gen.tasks.size());
    for (double a : m.accuracy[0]) {
      EXPECT_GE(a, 0.0) << name;
      EXPECT_LE(a, 1.0) << name;
    }
    EXPECT_GE(m.heldout_accuracy, 0.0);
    EXPECT_LE(m.heldout_accuracy, 1.0);
    EXPECT_FALSE(std::isnan(m.final_accuracy));
  }
  const auto& poly = gen.method("Polytropon + MHR-z");
  for (size_t j = 0; j < o.generalisation_tasks().size(); ++j)
    EXPECT_EQ(poly.accuracy[0][j], gen.method("Polytropon, uniform routing (no adaptation)").accuracy[0][j]);
  EXPECT_EQ(gen.method("per-task LoRA").trainable_parameters,
            gen.method("per-task LoRA").active_parameters * static_cast<int64_t>(gen.tasks.size()));

  // (d) MoE: fewer active than trained parameters, a router loss, real accuracies; the
  // rank-M·r LoRA has exactly the MoE's expert parameters (the MoE adds its routers).
  const auto& mo = r.experiments[3];
  EXPECT_EQ(mo.key, "moe");
  ASSERT_EQ(mo.methods.size(), 3u);
  const auto& experts = mo.methods[0];
  EXPECT_LT(experts.active_parameters, experts.trainable_parameters);
  EXPECT_GT(experts.active_parameters, 0);
  EXPECT_GT(experts.aux_loss, 0.0);
  EXPECT_FALSE(experts.aux.loss.empty());
  EXPECT_EQ(mo.methods[1].active_parameters, mo.methods[1].trainable_parameters);
  EXPECT_LT(mo.methods[1].trainable_parameters, experts.active_parameters);  // rank r + router ≥ rank r
  // active = router + experts · k/M  =>  experts = (trainable - active) · M / (M - k)
  const int64_t M = o.moe_experts(), k = o.moe_k();
  EXPECT_EQ(mo.methods[2].trainable_parameters,
            (experts.trainable_parameters - experts.active_parameters) * M / (M - k));
  EXPECT_LT(mo.methods[2].trainable_parameters, experts.trainable_parameters);
  for (const auto& m : mo.methods)
    for (double a : m.accuracy.at(0)) {
      EXPECT_GE(a, 0.0);
      EXPECT_LE(a, 1.0);
    }

  // Written: report with charts, the backbone, one module folder per task.
  std::ifstream f(dir / "report.html");
  std::stringstream html;
  html << f.rdbuf();
  EXPECT_NE(html.str().find("<svg"), std::string::npos);
  for (const auto* title : {"(a) continual learning", "(c) systematic generalisation", "(d) mixture of LoRA experts"})
    EXPECT_NE(html.str().find(title), std::string::npos) << title;
  EXPECT_TRUE(modula::fs::is_file(dir / "backbone/model.safetensors"));
  for (const auto& t : o.continual_tasks())
    EXPECT_TRUE(modula::fs::is_file(dir / ("modules/" + t + "/adapter_config.json")));
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
  expect_message(QuickstartOptions().experiments({"mixture"}), "'mixture'");
  expect_message(QuickstartOptions().heldout_tasks({"reverse+shift"}).generalisation_tasks({"reverse+shift", "sort"}),
                 "same function");
  expect_message(
      QuickstartOptions().generalisation_tasks({"reverse+shift", "shift+duplicate"}).heldout_tasks({"duplicate+shift"}),
      "same function");
  expect_message(QuickstartOptions().generalisation_tasks({"reverse+shift"}).heldout_tasks({"sort+shift"}), "'sort'");
  expect_message(QuickstartOptions().moe_k(5), "moe_k");
  expect_message(QuickstartOptions().hidden_size(30).num_heads(4), "hidden_size");
  expect_message(QuickstartOptions().pretrain_tasks({"sort+shift"}), "primitive");
  expect_message(QuickstartOptions().finetune_steps(0), "finetune_steps");
}
