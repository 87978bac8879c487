// Evaluation and prediction outside a run (train/evaluate.h): a tiny classifier (sequence +
// token classification, one LoRA each) and a tiny causal-LM adapter are trained here, then
// evaluated from their run folders, from a config file and from a model + module folder.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>

#include "modula/train/data.h"
#include "modula/train/evaluate.h"
#include "modula/train/run_output.h"
#include "modula/train/trainer.h"
#include "support/errors.h"
#include "support/process.h"
#include "tiny.h"

using namespace modula;
using namespace modula::train;
using modula::testing::error_of;
using modula::testing::fixture;
using modula::testing::TempDir;
using modula::testing::write_lines;
using json = nlohmann::json;

namespace {

json lora(const json& targets) {
  return {{"peft_type", "LORA"}, {"r", 4}, {"lora_alpha", 8}, {"target_modules", targets}};
}

// A run written to `dir`/run.json and trained: sentiment (sequence classification) and
// tagging (token classification), one LoRA each, on bert-cls with the tiny tokenizer.
struct ClassifierRun {
  TempDir dir;
  std::vector<json> sent_dev = modula::testing::tiny_classification(8), ner_dev = modula::testing::tiny_tagging(8);
  TrainResult result;
  explicit ClassifierRun(double lr, int64_t steps) {
    write_lines(dir / "sent_train.jsonl", modula::testing::tiny_classification(16));
    write_lines(dir / "sent_dev.jsonl", sent_dev);
    write_lines(dir / "ner_train.jsonl", modula::testing::tiny_tagging(12));
    write_lines(dir / "ner_dev.jsonl", ner_dev);
    json cfg = {
        {"model", fixture("hf/models/bert-cls")},
        {"tokenizer", modula::testing::write_tiny_tokenizer(dir / "tokenizer.json", true)},
        {"output", dir / "out"},
        {"seed", 3},
        {"optim", {{"lr", lr}, {"lr_heads", 3 * lr}, {"max_steps", steps}, {"batch_size", 4}}},
        {"modules",
         {{{"name", "sent"}, {"config", lora("all-linear")}}, {{"name", "ner"}, {"config", lora("all-linear")}}}},
        {"tasks",
         {{{"name", "sent"},
           {"type", "sequence_classification"},
           {"train", dir / "sent_train.jsonl"},
           {"eval", dir / "sent_dev.jsonl"},
           {"modules", {"sent"}}},
          {{"name", "ner"},
           {"type", "token_classification"},
           {"train", dir / "ner_train.jsonl"},
           {"eval", dir / "ner_dev.jsonl"},
           {"modules", {"ner"}}}}}};
    std::ofstream(dir / "run.json") << cfg.dump(2);
    result = train::train(load_train_config(dir / "run.json"));
  }
  std::string out() const { return dir / "out"; }
};

const ClassifierRun& classifier() {
  static ClassifierRun run(1e-2, 80);
  return run;
}

// A causal-LM LoRA on the llama fixture: prompt -> completion.
struct LmRun {
  TempDir dir;
  std::vector<json> dev;
  TrainResult result;
  LmRun() {
    for (int i = 0; i < 16; ++i)
      dev.push_back(
          {{"prompt", i % 2 ? "alice lives in" : "bob lives in"}, {"completion", i % 2 ? "paris" : "london"}});
    write_lines(dir / "qa.jsonl", dev);
    json cfg = {
        {"model", fixture("hf/models/llama")},
        {"tokenizer", modula::testing::write_tiny_tokenizer(dir / "tokenizer.json", false)},
        {"output", dir / "out"},
        {"seed", 3},
        {"optim", {{"lr", 1e-2}, {"max_steps", 30}, {"batch_size", 4}}},
        {"modules", {{{"name", "m"}, {"config", lora("all-linear")}}}},
        {"tasks", {{{"name", "qa"}, {"type", "causal_lm"}, {"train", dir / "qa.jsonl"}, {"eval", dir / "qa.jsonl"}}}}};
    result = train::train(parse_train_config(cfg));
  }
  std::string out() const { return dir / "out"; }
};

const LmRun& lm() {
  static LmRun run;
  return run;
}

void expect_same_metrics(const std::map<std::string, double>& got, const std::map<std::string, double>& want) {
  ASSERT_EQ(got.size(), want.size());
  for (const auto& [k, v] : want) EXPECT_DOUBLE_EQ(got.at(k), v) << k;
}

EvalSetup run_setup(const std::string& run) {
  EvalSetup s;
  s.run = run;
  return s;
}

}  // namespace

TEST(RunOutput, ConfigRoundTrips) {
  const auto& run = classifier();
  auto c = load_train_config(run.dir / "run.json");
  auto saved = load_run(run.out());
  EXPECT_EQ(to_json(saved.config), to_json(c));
  EXPECT_EQ(saved.dir, run.out());
  EXPECT_EQ(load_run(run.dir / "run.json").dir, c.output);
}

TEST(Evaluate, RunMetricsEqualTheTrainersFinalEval) {
  const auto& run = classifier();
  Evaluator ev(run_setup(run.out()));
  EXPECT_EQ(ev.task_names(), (std::vector<std::string>{"sent", "ner"}));
  EXPECT_EQ(ev.task("sent").labels, (std::vector<std::string>{"neg", "pos"}));
  EXPECT_EQ(ev.task("token_classification").name, "ner");  // a task by its type
  expect_same_metrics(ev.evaluate("sent", run.sent_dev, "sent_dev.jsonl").metrics, run.result.eval.at("sent"));
  expect_same_metrics(ev.evaluate("ner", run.ner_dev, "ner_dev.jsonl").metrics, run.result.eval.at("ner"));
  // The run's config file gives the same.
  Evaluator from_config(run_setup(run.dir / "run.json"));
  expect_same_metrics(from_config.evaluate("sent", run.sent_dev, "d").metrics, run.result.eval.at("sent"));
  auto j = ev.evaluate("sent", run.sent_dev, "d").to_json();
  EXPECT_EQ(j["type"], "sequence_classification");
  EXPECT_EQ(j["examples"], 8);
  EXPECT_TRUE(j["metrics"].contains("macro_f1"));
}

TEST(Evaluate, TrainedClassifierIsAboveChanceUntrainedIsNot) {
  const auto& run = classifier();
  Evaluator ev(run_setup(run.out()));
  EXPECT_GE(ev.evaluate("sent", run.sent_dev, "d").metrics.at("accuracy"), 0.9)
      << run.result.eval.at("sent").at("loss");
  EXPECT_GE(ev.evaluate("ner", run.ner_dev, "d").metrics.at("accuracy"), 0.9);
  ClassifierRun untrained(1e-9, 1);  // the same initial heads and modules, one negligible step
  Evaluator ev0(run_setup(untrained.out()));
  EXPECT_LE(ev0.evaluate("sent", run.sent_dev, "d").metrics.at("accuracy"), 0.75);
  EXPECT_LE(ev0.evaluate("ner", run.ner_dev, "d").metrics.at("accuracy"), 0.75);
}

TEST(Predict, LabelsAndTagsAgreeWithEvaluate) {
  const auto& run = classifier();
  Evaluator ev(run_setup(run.out()));
  auto rows = ev.predict("sent", run.sent_dev, "d");
  ASSERT_EQ(rows.size(), run.sent_dev.size());
  double right = 0;
  for (const auto& r : rows) {
    right += r["prediction"] == r["label"];
    double mass = 0;
    for (const auto& [label, p] : r["probabilities"].items()) mass += p.get<double>();
    EXPECT_NEAR(mass, 1.0, 1e-5);
    EXPECT_GE(r["probabilities"][r["prediction"].get<std::string>()].get<double>(), 0.5);
  }
  EXPECT_DOUBLE_EQ(right / static_cast<double>(rows.size()),
                   ev.evaluate("sent", run.sent_dev, "d").metrics.at("accuracy"));
  // Gold labels are not needed: the same predictions without them.
  auto unlabeled = run.sent_dev;
  for (auto& r : unlabeled) r.erase("label");
  auto again = ev.predict("sent", unlabeled, "d");
  for (size_t i = 0; i < rows.size(); ++i) EXPECT_EQ(again[i]["prediction"], rows[i]["prediction"]);

  auto tags = ev.predict("ner", run.ner_dev, "d");
  double words = 0, tags_right = 0;
  for (const auto& r : tags) {
    ASSERT_EQ(r["prediction"].size(), r["tags"].size());
    ASSERT_EQ(r["probabilities"].size(), r["tags"].size());
    for (size_t w = 0; w < r["tags"].size(); ++w) words += 1, tags_right += r["prediction"][w] == r["tags"][w];
  }
  EXPECT_DOUBLE_EQ(tags_right / words, ev.evaluate("ner", run.ner_dev, "d").metrics.at("accuracy"));
}

TEST(Evaluate, CausalLmAdapterFromTheRunAndFromItsFolder) {
  const auto& run = lm();
  Evaluator ev(run_setup(run.out()));
  auto r = ev.evaluate("", run.dev, "qa.jsonl");
  expect_same_metrics(r.metrics, run.result.eval.at("qa"));
  EXPECT_NEAR(r.metrics.at("perplexity"), std::exp(r.metrics.at("loss")), 1e-12 * r.metrics.at("perplexity"));
  // A model with the module folder and the task given by hand: the same numbers.
  EvalSetup s;
  s.model = fixture("hf/models/llama");
  s.tokenizer = run.dir / "tokenizer.json";
  s.adapters = {run.out() + "/modules/m"};
  TaskConfig t;
  t.name = "causal_lm", t.type = TaskType::CausalLM;
  s.tasks = {t};
  Evaluator by_hand(s);
  expect_same_metrics(by_hand.evaluate("causal_lm", run.dev, "qa.jsonl").metrics, r.metrics);
  // Greedy completions of the prompts: what the adapter learned.
  std::vector<json> prompts = {{{"prompt", "alice lives in"}}, {{"prompt", "bob lives in"}}};
  PredictOptions o;
  o.generate.max_new_tokens = 3;
  auto out = ev.predict("qa", prompts, "prompts", o);
  ASSERT_EQ(out.size(), 2u);
  EXPECT_EQ(out[0]["completion"], "paris");
  EXPECT_EQ(out[1]["completion"], "london");
  EXPECT_EQ(out[0]["prompt"], "alice lives in");
}

TEST(Evaluate, BadInputsNameTheFileAndKey) {
  const auto& run = classifier();
  Evaluator ev(run_setup(run.out()));
  auto e = error_of([&] { ev.evaluate("sent", {{{"txt", "good"}, {"label", "pos"}}}, "dev.jsonl"); });
  EXPECT_NE(e.find("dev.jsonl:1: missing field 'text'"), std::string::npos) << e;
  e = error_of([&] { ev.evaluate("sent", {{{"text", "good"}, {"label", "meh"}}}, "dev.jsonl"); });
  EXPECT_NE(e.find("dev.jsonl:1: unknown label \"meh\" (labels: neg, pos)"), std::string::npos) << e;
  e = error_of([&] { ev.evaluate("qa", run.sent_dev, "dev.jsonl"); });
  EXPECT_NE(e.find("no single task named 'qa' (tasks: sent (sequence_classification), ner"), std::string::npos) << e;
  e = error_of([&] { ev.evaluate("", run.sent_dev, "dev.jsonl"); });
  EXPECT_NE(e.find("several tasks"), std::string::npos) << e;
  e = error_of([&] { ev.predict("ner", {{{"tokens", {"alice", "runs"}}, {"tags", {"PER", "X"}}}}, "ner.jsonl"); });
  EXPECT_NE(e.find("ner.jsonl:1: unknown label \"X\""), std::string::npos) << e;
  // Not a run folder; a classification task without heads.
  TempDir empty;
  e = error_of([&] { Evaluator bad(run_setup(empty.path)); });
  EXPECT_NE(e.find(empty.path + ": no run_config.json"), std::string::npos) << e;
  EvalSetup s;
  s.model = fixture("hf/models/bert-cls");
  s.tokenizer = run.dir / "tokenizer.json";
  TaskConfig t;
  t.name = "sequence_classification";
  s.tasks = {t};
  e = error_of([&] { Evaluator bad(s); });
  EXPECT_NE(e.find("task 'sequence_classification' (sequence_classification) needs a trained head"), std::string::npos)
      << e;
  s.heads = run.out() + "/heads.safetensors";  // found by type: the run's one sequence head
  Evaluator by_type(s);
  EXPECT_EQ(by_type.task("").labels, (std::vector<std::string>{"neg", "pos"}));
  // A run whose heads are gone.
  const std::string heads = run.out() + "/heads.safetensors";
  fs::rename(heads, heads + ".moved");
  e = error_of([&] { Evaluator bad(run_setup(run.out())); });
  fs::rename(heads + ".moved", heads);
  EXPECT_NE(e.find("needs its head, but " + heads + " does not exist"), std::string::npos) << e;
}

// A fresh run into a folder holding another complete run (--overwrite), killed before it
// finishes: the old run's modules and result must not survive beside the new run's config
// (eval would take them for the new run's); eval of the folder is refused, naming the module.
TEST(Evaluate, OverwrittenRunKilledEarlyLeavesNoMixOfRuns) {
  TempDir dir;
  write_lines(dir / "qa.jsonl", {{{"prompt", "alice lives in"}, {"completion", "paris"}}});
  json cfg = {{"model", fixture("hf/models/llama")},
              {"tokenizer", modula::testing::write_tiny_tokenizer(dir / "tokenizer.json", false)},
              {"output", dir / "out"},
              {"optim", {{"lr", 1e-2}, {"max_steps", 4}, {"batch_size", 1}}},
              {"modules", {{{"name", "old"}, {"config", lora(json::array({"q_proj"}))}}}},
              {"tasks", {{{"name", "qa"}, {"type", "causal_lm"}, {"train", dir / "qa.jsonl"}}}}};
  train::train(parse_train_config(cfg));
  ASSERT_TRUE(fs::is_dir(dir / "out/modules/old"));
  ASSERT_TRUE(fs::is_file(dir / "out/result.json"));
  cfg["modules"][0]["name"] = "new";
  Callbacks killed;
  killed.on_step = [](const StepInfo& step) {
    if (step.step == 2) throw std::runtime_error("killed");
  };
  EXPECT_THROW(train::train(parse_train_config(cfg), {}, killed), std::runtime_error);
  EXPECT_FALSE(fs::exists(dir / "out/modules/old"));
  EXPECT_FALSE(fs::exists(dir / "out/result.json"));
  auto e = error_of([&] { Evaluator ev(run_setup(dir / "out")); });
  EXPECT_NE(e.find("module 'new' was not saved"), std::string::npos) << e;
}

#ifdef MODULA_CLI
// The CLI over the same library: `modula eval RUN --json -` and `modula predict`.
TEST(EvalCli, EvalAndPredictOfARun) {
  const auto& run = classifier();
  TempDir d;
  auto pid = modula::testing::spawn({MODULA_CLI, "eval", run.out(), "--json", "-"}, d / "eval.log");
  ASSERT_EQ(modula::testing::wait_exit(pid), 0) << modula::testing::slurp(d / "eval.log");
  auto text = modula::testing::slurp(d / "eval.log");
  auto j = json::parse(text.substr(text.find('{')));
  ASSERT_EQ(j["results"].size(), 2u);  // every task on its eval file
  EXPECT_DOUBLE_EQ(j["results"][0]["metrics"]["accuracy"].get<double>(), run.result.eval.at("sent").at("accuracy"));
  EXPECT_DOUBLE_EQ(j["results"][1]["metrics"]["loss"].get<double>(), run.result.eval.at("ner").at("loss"));
  pid = modula::testing::spawn(
      {MODULA_CLI, "predict", run.out(), "--task", "sent", "--data", run.dir / "sent_dev.jsonl", "-o", d / "p.jsonl"},
      d / "predict.log");
  ASSERT_EQ(modula::testing::wait_exit(pid), 0) << modula::testing::slurp(d / "predict.log");
  auto rows = load_records(d / "p.jsonl");
  ASSERT_EQ(rows.size(), 8u);
  EXPECT_TRUE(rows[0].contains("prediction") && rows[0].contains("probabilities"));
  pid = modula::testing::spawn({MODULA_CLI, "eval", "--model", fixture("hf/models/llama"), "--task", "summarization",
                                "--data", run.dir / "sent_dev.jsonl"},
                               d / "bad.log");
  EXPECT_EQ(modula::testing::wait_exit(pid), 1);
  EXPECT_NE(modula::testing::slurp(d / "bad.log").find("unknown task type 'summarization'"), std::string::npos)
      << modula::testing::slurp(d / "bad.log");
}
#endif
