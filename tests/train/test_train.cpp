// The config-driven trainer: configs, data, metrics, schedules, checkpoints, every task type,
// multi-task and continual runs, resume, NaN detection.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>

#include "modula/backbone/registry.h"
#include "modula/io/safetensors.h"
#include "modula/io/yaml.h"
#include "modula/train/checkpoint.h"
#include "modula/train/config.h"
#include "modula/train/data.h"
#include "modula/train/metrics.h"
#include "modula/train/schedule.h"
#include "modula/train/trainer.h"
#include "support/errors.h"
#include "tiny.h"

using namespace modula;
using namespace modula::train;
using modula::testing::fixture;
using modula::testing::TempDir;
using json = nlohmann::json;

using modula::testing::error_of;
namespace {

json base_config(const TempDir& dir, const std::string& model, bool bert) {
  return {{"model", fixture("hf/models/" + model)},
          {"tokenizer", modula::testing::write_tiny_tokenizer(dir / "tokenizer.json", bert)},
          {"output", dir / "out"},
          {"seed", 3},
          {"optim", {{"lr", 1e-2}, {"max_steps", 30}, {"batch_size", 4}, {"schedule", "cosine"}, {"warmup_steps", 3}}},
          {"modules",
           {{{"name", "m"},
             {"config", {{"peft_type", "LORA"}, {"r", 4}, {"lora_alpha", 8}, {"target_modules", "all-linear"}}}}}}};
}

// Trains and returns (mean of the first 5 logged losses, mean of the last 5).
std::pair<double, double> loss_drop(const json& cfg, const Datasets& data, TrainResult* out = nullptr) {
  std::vector<double> losses;
  Callbacks cb;
  cb.on_step = [&](const StepInfo& s) { losses.push_back(s.loss); };
  auto r = train::train(parse_train_config(cfg), data, cb);
  if (out) *out = r;
  EXPECT_GE(losses.size(), 10u);
  double a = 0, b = 0;
  for (size_t i = 0; i < 5; ++i) a += losses[i] / 5, b += losses[losses.size() - 1 - i] / 5;
  return {a, b};
}

std::map<std::string, torch::Tensor> tensors_of(const std::string& file) {
  auto f = io::SafetensorsFile::open(file);
  std::map<std::string, torch::Tensor> out;
  for (const auto& k : f.keys()) out[k] = f.get(k).clone();
  return out;
}

}  // namespace

// ---- configs -------------------------------------------------------------------------

TEST(TrainConfig, YamlParsesWithTypesAndDefaults) {
  auto j = io::yaml_to_json(
      "model: m\ntasks:\n  - {name: a, type: causal_lm, train: t.jsonl}\noptim: {lr: 3e-4, max_steps: 5, bf16: "
      "false}\n");
  auto c = parse_train_config(j, "x.yaml");
  EXPECT_EQ(c.tasks.at(0).type, TaskType::CausalLM);
  EXPECT_DOUBLE_EQ(c.optim.lr, 3e-4);
  EXPECT_EQ(c.optim.max_steps, 5);
  EXPECT_EQ(c.optim.bf16, "false");
  EXPECT_EQ(c.optim.batch_size, 8);  // default
}

TEST(TrainConfig, BadConfigsNameTheKey) {
  auto task = json{{"name", "a"}, {"type", "causal_lm"}, {"train", "t.jsonl"}};
  EXPECT_NE(error_of([&] {
              parse_train_config(json{{"tasks", {task}}}, "c.yaml");
            }).find("'model' is missing"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              parse_train_config(json{{"model", "m"}}, "c.yaml");
            }).find("'tasks' is missing"),
            std::string::npos);
  auto bad_type = task;
  bad_type["type"] = "summarization";
  auto e = error_of([&] { parse_train_config(json{{"model", "m"}, {"tasks", {bad_type}}}, "c.yaml"); });
  EXPECT_NE(e.find("tasks[0].type"), std::string::npos) << e;
  EXPECT_NE(e.find("unknown task type 'summarization'"), std::string::npos) << e;
  auto wrong = task;
  wrong["max_length"] = "long";
  e = error_of([&] { parse_train_config(json{{"model", "m"}, {"tasks", {wrong}}}, "c.yaml"); });
  EXPECT_NE(e.find("'tasks[0].max_length' must be an integer"), std::string::npos) << e;
  e = error_of([&] { parse_train_config(json{{"model", "m"}, {"tasks", {task}}, {"optim", {{"lr", -1}}}}, "c.yaml"); });
  EXPECT_NE(e.find("'optim.lr' must be positive"), std::string::npos) << e;
  e = error_of([&] { parse_train_config(json{{"model", "m"}, {"tasks", {task}}, {"optimizer", {}}}, "c.yaml"); });
  EXPECT_NE(e.find("unknown key 'optimizer'"), std::string::npos) << e;
  auto uses = task;
  uses["modules"] = {"nope"};
  e = error_of([&] { parse_train_config(json{{"model", "m"}, {"tasks", {uses}}}, "c.yaml"); });
  EXPECT_NE(e.find("module 'nope'"), std::string::npos) << e;
  EXPECT_NE(error_of([] { io::yaml_to_json("a: [1, 2", "bad.yaml"); }).find("bad.yaml: invalid YAML"),
            std::string::npos);
}

// ---- data ----------------------------------------------------------------------------

TEST(TrainData, CsvTsvJsonlAndErrors) {
  TempDir d;
  std::ofstream(d / "a.csv") << "text,label\n\"hello, \"\"world\"\"\",pos\nbye,neg\n";
  auto csv = load_records(d / "a.csv");
  ASSERT_EQ(csv.size(), 2u);
  EXPECT_EQ(csv[0]["text"], "hello, \"world\"");
  std::ofstream(d / "a.tsv") << "text\tlabel\nhi there\t1\n";
  EXPECT_EQ(load_records(d / "a.tsv")[0]["label"], "1");
  std::ofstream(d / "empty.jsonl") << "\n";
  EXPECT_NE(error_of([&] { load_records(d / "empty.jsonl"); }).find("has no records"), std::string::npos);
  std::ofstream(d / "bad.jsonl") << "{\"text\": 1}\n[1]\n";
  EXPECT_NE(error_of([&] { load_records(d / "bad.jsonl"); }).find("bad.jsonl:2"), std::string::npos);
  std::ofstream(d / "ragged.csv") << "a,b\n1,2,3\n";
  EXPECT_NE(error_of([&] { load_records(d / "ragged.csv"); }).find("ragged.csv:2: 3 fields"), std::string::npos);
  EXPECT_NE(error_of([&] { load_records(d / "missing.jsonl"); }).find("cannot open data file"), std::string::npos);
}

TEST(TrainData, PromptCompletionMasksThePrompt) {
  TempDir d;
  auto tok = text::Tokenizer::from_file(modula::testing::write_tiny_tokenizer(d / "t.json", false));
  auto mc = io::load_hf_config(fixture("hf/models/llama"));
  TaskConfig t;
  t.name = "qa", t.type = TaskType::CausalLM;
  std::vector<json> rows = {{{"prompt", "alice lives in"}, {"completion", "paris"}}};
  auto enc = Encoding::build(t, rows, *tok, mc);
  auto ex = enc.encode(rows, "mem").at(0);
  // <s> alice lives in | paris </s>
  ASSERT_EQ(ex.input_ids.size(), 6u);
  EXPECT_EQ(ex.input_ids.front(), 1);
  EXPECT_EQ(ex.input_ids.back(), 2);
  std::vector<int64_t> want = {kIgnoreIndex, kIgnoreIndex, kIgnoreIndex, kIgnoreIndex, ex.input_ids[4], 2};
  EXPECT_EQ(ex.labels, want);
}

TEST(TrainData, LabelsAndMissingFields) {
  TempDir d;
  auto tok = text::Tokenizer::from_file(modula::testing::write_tiny_tokenizer(d / "t.json", true));
  auto mc = io::load_hf_config(fixture("hf/models/bert"));
  TaskConfig t;
  t.name = "s";
  auto rows = modula::testing::tiny_classification(4);
  auto enc = Encoding::build(t, rows, *tok, mc);
  EXPECT_EQ(enc.labels(), (std::vector<std::string>{"neg", "pos"}));
  EXPECT_NE(error_of([&] {
              enc.encode({{{"text", "good"}, {"label", "meh"}}}, "dev.jsonl");
            }).find("dev.jsonl:1: unknown label \"meh\""),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              enc.encode({{{"txt", "good"}, {"label", "pos"}}}, "dev.jsonl");
            }).find("missing field 'text'"),
            std::string::npos);
}

// Was: "index out of range in self" and a 27-frame stack trace at the first long batch.
TEST(TrainData, MaxLengthAboveThePositionLimitIsNamed) {
  TempDir d;
  auto tok = text::Tokenizer::from_file(modula::testing::write_tiny_tokenizer(d / "t.json", true));
  auto mc = io::load_hf_config(fixture("hf/models/bert"));
  TaskConfig t;
  t.name = "s";
  t.max_length = mc.max_position_embeddings + 1;
  auto rows = modula::testing::tiny_classification(4);
  auto error = error_of([&] { Encoding::build(t, rows, *tok, mc); });
  EXPECT_NE(error.find("max_length " + std::to_string(t.max_length)), std::string::npos) << error;
  EXPECT_NE(error.find("max_position_embeddings " + std::to_string(mc.max_position_embeddings)), std::string::npos)
      << error;
  t.max_length = mc.max_position_embeddings;
  EXPECT_NO_THROW(Encoding::build(t, rows, *tok, mc));
}

TEST(TrainData, BucketingCoversEveryExampleOnce) {
  std::vector<int64_t> lengths;
  for (int i = 0; i < 37; ++i) lengths.push_back((i * 7) % 13 + 1);
  auto batches = bucketed_batches(lengths, 4, 11);
  std::vector<int> seen(37, 0);
  for (auto& b : batches) {
    EXPECT_LE(b.size(), 4u);
    for (auto i : b) ++seen[i];
  }
  for (int s : seen) EXPECT_EQ(s, 1);
  EXPECT_EQ(batches, bucketed_batches(lengths, 4, 11));  // seeded
  EXPECT_NE(batches, bucketed_batches(lengths, 4, 12));
}

// ---- metrics, schedules -------------------------------------------------------------

TEST(TrainMetrics, AccuracyMacroF1Perplexity) {
  auto pred = torch::tensor({0, 1, 1, 2, 0, 5}), target = torch::tensor({0, 1, 0, 2, 2, -100});
  EXPECT_DOUBLE_EQ(accuracy(pred, target), 3.0 / 5.0);
  // class 0: tp 1, pred 2, actual 2 -> 0.5; class 1: tp 1, pred 2, actual 1 -> 2/3; class 2: tp 1, pred 1, actual 2 ->
  // 2/3
  EXPECT_NEAR(macro_f1(pred, target, 3), (0.5 + 2.0 / 3 + 2.0 / 3) / 3, 1e-12);
  EXPECT_NEAR(perplexity(std::log(4.0) * 10, 10), 4.0, 1e-12);
}

TEST(TrainSchedule, WarmupCosineAndSampling) {
  EXPECT_DOUBLE_EQ(lr_factor("cosine", 0, 4, 104), 0.25);
  EXPECT_DOUBLE_EQ(lr_factor("cosine", 3, 4, 104), 1.0);
  EXPECT_NEAR(lr_factor("cosine", 54, 4, 104), 0.5, 1e-12);
  EXPECT_NEAR(lr_factor("linear", 104, 4, 104, 0.1), 0.1, 1e-12);
  EXPECT_DOUBLE_EQ(lr_factor("constant", 50, 0, 100), 1.0);
  auto p = sampling_probabilities({100, 25}, "temperature", 2.0);  // ∝ sqrt(n): 10, 5
  EXPECT_NEAR(p[0], 2.0 / 3, 1e-12);
  EXPECT_NEAR(sampling_probabilities({100, 25}, "proportional", 1)[1], 0.2, 1e-12);
  EXPECT_NEAR(sampling_probabilities({100, 25}, "uniform", 1)[1], 0.5, 1e-12);
}

// ---- checkpoints ---------------------------------------------------------------------

TEST(TrainCheckpoint, CutOffCheckpointFallsBackToThePreviousOne) {
  TempDir d;
  auto root = d / "ck";
  for (int64_t step : {5, 10, 15}) {
    CheckpointData c;
    c.tensors = {{"w", torch::full({4}, static_cast<float>(step))}};
    c.optimizer = "opt" + std::to_string(step);
    c.state = {{"step", step}};
    save_checkpoint(root, step, c, 2);
  }
  EXPECT_FALSE(fs::exists(root + "/step-000000005"));  // keep = 2
  // A write cut off before the rename, and a newest folder whose file was truncated.
  fs::make_dirs(root + "/step-000000020.tmp");
  auto newest = root + "/step-000000015/optimizer.bin";
  std::ofstream(newest, std::ios::trunc) << "op";
  EXPECT_NE(verify_checkpoint(root + "/step-000000015").find("optimizer.bin has 2 bytes"), std::string::npos);
  auto ck = load_latest_checkpoint(root);
  ASSERT_TRUE(ck);
  EXPECT_EQ(ck->step, 10);
  EXPECT_EQ(ck->data.optimizer, "opt10");
  EXPECT_EQ(ck->data.tensors.at(0).second[0].item<float>(), 10.0f);
  ASSERT_EQ(ck->skipped.size(), 1u);
  // No manifest at all: also skipped.
  fs::make_dirs(root + "/step-000000030");
  EXPECT_EQ(load_latest_checkpoint(root)->step, 10);
}

// ---- runs: every task type lowers the loss -------------------------------------------

TEST(TrainRun, CausalLmWithPromptCompletion) {
  TempDir d;
  auto cfg = base_config(d, "llama", false);
  cfg["tasks"] = {{{"name", "qa"}, {"type", "causal_lm"}}};
  Datasets data;
  for (int i = 0; i < 16; ++i)
    data["qa"].train.push_back(
        {{"prompt", i % 2 ? "alice lives in" : "bob lives in"}, {"completion", i % 2 ? "paris" : "london"}});
  data["qa"].eval = data["qa"].train;
  TrainResult r;
  auto [first, last] = loss_drop(cfg, data, &r);
  EXPECT_LT(last, 0.5 * first) << first << " -> " << last;
  EXPECT_GT(r.eval.at("qa").at("perplexity"), 0.0);
  EXPECT_TRUE(fs::is_file(d / "out/modules/m/adapter_model.safetensors"));
  EXPECT_TRUE(fs::is_file(d / "out/metrics.jsonl"));
  // Only the LoRA modules train: far fewer than the backbone's parameters.
  EXPECT_GT(r.trainable_parameters, 0);
  EXPECT_LT(r.trainable_parameters * 5, r.total_parameters);
}

TEST(TrainRun, MaskedLm) {
  TempDir d;
  auto cfg = base_config(d, "bert", true);
  cfg["tasks"] = {{{"name", "mlm"}, {"type", "masked_lm"}, {"mlm_probability", 0.3}}};
  // Full fine-tuning (no modules): the backbone and its MLM head train.
  cfg.erase("modules");
  cfg["train_backbone"] = true;
  cfg["optim"]["max_steps"] = 40;
  cfg["optim"]["lr"] = 3e-3;
  Datasets data;
  data["mlm"].train = modula::testing::tiny_text(20);
  auto [first, last] = loss_drop(cfg, data);
  EXPECT_LT(last, 0.6 * first) << first << " -> " << last;
}

TEST(TrainRun, SequenceClassificationFromFiles) {
  TempDir d;
  auto cfg = base_config(d, "bert-cls", true);
  modula::testing::write_lines(d / "train.jsonl", modula::testing::tiny_classification(16));
  cfg["tasks"] = {{{"name", "sent"},
                   {"type", "sequence_classification"},
                   {"train", d / "train.jsonl"},
                   {"eval", d / "train.jsonl"}}};
  cfg["optim"]["lr_heads"] = 3e-2;
  TrainResult r;
  auto [first, last] = loss_drop(cfg, {}, &r);
  EXPECT_LT(last, 0.5 * first) << first << " -> " << last;
  EXPECT_GE(r.eval.at("sent").at("accuracy"), 0.9);
  EXPECT_GE(r.eval.at("sent").at("macro_f1"), 0.9);
  auto heads = tensors_of(d / "out/heads.safetensors");
  EXPECT_EQ(heads.at("sent.weight").sizes(), (std::vector<int64_t>{2, 64}));
}

TEST(TrainRun, TokenClassification) {
  TempDir d;
  auto cfg = base_config(d, "bert", true);
  cfg["tasks"] = {{{"name", "ner"}, {"type", "token_classification"}}};
  cfg["optim"]["lr_heads"] = 3e-2;
  Datasets data;
  data["ner"].train = modula::testing::tiny_tagging(16);
  data["ner"].eval = data["ner"].train;
  TrainResult r;
  auto [first, last] = loss_drop(cfg, data, &r);
  EXPECT_LT(last, 0.5 * first) << first << " -> " << last;
  EXPECT_GE(r.eval.at("ner").at("accuracy"), 0.9);
}

// ---- multi-task, continual ------------------------------------------------------------

TEST(TrainRun, MultiTaskPerTaskModules) {
  TempDir d;
  auto cfg = base_config(d, "bert", true);
  json lora = {{"peft_type", "LORA"}, {"r", 2}, {"target_modules", {"query", "value"}}};
  cfg["modules"] = {{{"name", "sent"}, {"config", lora}}, {{"name", "ner"}, {"config", lora}}};
  cfg["tasks"] = {{{"name", "sent"}, {"type", "sequence_classification"}, {"modules", {"sent"}}},
                  {{"name", "ner"}, {"type", "token_classification"}, {"modules", {"ner"}}}};
  cfg["multitask"] = {{"sampling", "temperature"}, {"temperature", 2.0}};
  cfg["optim"]["max_steps"] = 20;
  Datasets data;
  data["sent"].train = modula::testing::tiny_classification(16);
  data["ner"].train = modula::testing::tiny_tagging(8);
  std::set<std::string> seen;
  Callbacks cb;
  cb.on_step = [&](const StepInfo& s) { seen.insert(s.task); };
  train::train(parse_train_config(cfg), data, cb);
  EXPECT_EQ(seen, (std::set<std::string>{"sent", "ner"}));
  // Each module trained (lora_B moved from its zero init).
  for (const char* m : {"sent", "ner"}) {
    auto t = tensors_of(d / "out/modules" + "/" + m + "/adapter_model.safetensors");
    double b = 0;
    for (auto& [k, v] : t)
      if (k.find("lora_B") != std::string::npos) b += v.abs().sum().item<double>();
    EXPECT_GT(b, 0) << m;
  }
}

TEST(TrainRun, ContinualModulesDoNotForgetAndTheBaselinesRun) {
  TempDir d;
  auto cfg = base_config(d, "bert", true);
  cfg.erase("modules");
  cfg["tasks"] = {{{"name", "A"}, {"type", "sequence_classification"}},
                  {{"name", "B"}, {"type", "sequence_classification"}}};
  cfg["continual"] = {{"enabled", true},
                      {"full_finetune_baseline", true},
                      {"shared_module_baseline", true},
                      {"module", {{"peft_type", "LORA"}, {"r", 2}, {"target_modules", {"query", "value"}}}}};
  cfg["optim"]["max_steps"] = 8;
  cfg["optim"]["lr_heads"] = 3e-2;
  Datasets data;
  data["A"].train = data["A"].eval = modula::testing::tiny_classification(8, "good", "bad");
  data["B"].train = data["B"].eval = modula::testing::tiny_classification(8, "cat", "dog");
  auto r = train::train(parse_train_config(cfg), data);
  ASSERT_TRUE(r.continual && r.baseline);
  ASSERT_EQ(r.continual->accuracy.size(), 2u);
  ASSERT_EQ(r.continual->accuracy[0].size(), 2u);
  // Task A's module and head are frozen while B trains: A's accuracy is unchanged.
  EXPECT_DOUBLE_EQ(r.continual->accuracy[0][0], r.continual->accuracy[1][0]);
  EXPECT_DOUBLE_EQ(r.continual->average_forgetting, 0.0);
  EXPECT_EQ(r.baseline->accuracy.size(), 2u);
  // One module trained on A, then on B: the same sequence, its own rows.
  ASSERT_TRUE(r.shared);
  EXPECT_EQ(r.shared->accuracy.size(), 2u);
  EXPECT_EQ(r.shared->tasks, (std::vector<std::string>{"A", "B"}));
  EXPECT_TRUE(fs::is_file(d / "out/modules/A/adapter_model.safetensors"));
  EXPECT_FALSE(fs::exists(d / "out/modules/shared"));  // the baselines' modules are not saved
  EXPECT_TRUE(fs::is_file(d / "out/result.json"));
}

// ---- resume, errors ------------------------------------------------------------------

TEST(TrainRun, ResumeAfterInterruptionMatchesAnUninterruptedRun) {
  TempDir a, b;
  auto make = [](const TempDir& d) {
    auto cfg = base_config(d, "bert", true);
    cfg["tasks"] = {{{"name", "mlm"}, {"type", "masked_lm"}}, {{"name", "sent"}, {"type", "sequence_classification"}}};
    cfg["optim"]["max_steps"] = 16;
    cfg["optim"]["grad_accum"] = 2;
    cfg["optim"]["max_grad_norm"] = 1.0;
    cfg["checkpoint"] = {{"every", 4}, {"keep", 2}};
    return cfg;
  };
  Datasets data;
  data["mlm"].train = modula::testing::tiny_text(10);
  data["sent"].train = modula::testing::tiny_classification(10);
  train::train(parse_train_config(make(a)), data);
  // Interrupted after step 10 (the newest checkpoint is step 8), then resumed.
  Callbacks stop;
  stop.on_step = [](const StepInfo& s) {
    if (s.step == 10) throw std::runtime_error("interrupted");
  };
  EXPECT_THROW(train::train(parse_train_config(make(b)), data, stop), std::runtime_error);
  std::vector<std::string> notes;
  Callbacks cb;
  cb.on_message = [&](const std::string& m) { notes.push_back(m); };
  auto r = train::train(parse_train_config(make(b)), data, cb, /*resume=*/true);
  EXPECT_TRUE(r.resumed);
  bool said = false;
  for (auto& n : notes) said |= n.find("resumed train at step 8") != std::string::npos;
  EXPECT_TRUE(said);
  auto ta = tensors_of(a / "out/modules/m/adapter_model.safetensors"),
       tb = tensors_of(b / "out/modules/m/adapter_model.safetensors");
  ASSERT_EQ(ta.size(), tb.size());
  for (auto& [k, v] : ta)
    EXPECT_TRUE(torch::equal(v, tb.at(k)))
        << k << " max diff " << (v - tb.at(k)).abs().max().item<double>() << " norm " << v.abs().max().item<double>();
  // The same losses step by step (the resumed run's metrics continue the killed run's).
  auto losses = [](const std::string& file) {
    std::map<int64_t, double> out;
    std::ifstream in(file);
    for (std::string line; std::getline(in, line);) {
      auto j = json::parse(line);
      if (j["type"] == "step") out[j["global_step"].get<int64_t>()] = j["loss"].get<double>();
    }
    return out;
  };
  EXPECT_EQ(losses(a / "out/metrics.jsonl"), losses(b / "out/metrics.jsonl"));
  auto ha = tensors_of(a / "out/heads.safetensors"), hb = tensors_of(b / "out/heads.safetensors");
  for (auto& [k, v] : ha) EXPECT_TRUE(torch::equal(v, hb.at(k))) << k;
}

TEST(TrainRun, NanLossIsAClearError) {
  TempDir d;
  auto cfg = base_config(d, "llama", false);
  cfg["tasks"] = {{{"name", "lm"}, {"type", "causal_lm"}}};
  cfg["optim"]["lr"] = 1e30;
  cfg["optim"]["warmup_steps"] = 0;
  Datasets data;
  data["lm"].train = modula::testing::tiny_text(8);
  auto e = error_of([&] { train::train(parse_train_config(cfg), data); });
  EXPECT_TRUE(e.find("loss is NaN") != std::string::npos || e.find("loss is infinite") != std::string::npos ||
              e.find("gradient norm is not finite") != std::string::npos)
      << e;
}

TEST(TrainRun, BadDataIsAClearError) {
  TempDir d;
  auto cfg = base_config(d, "bert", true);
  std::ofstream(d / "empty.jsonl") << "";
  cfg["tasks"] = {{{"name", "s"}, {"type", "sequence_classification"}, {"train", d / "empty.jsonl"}}};
  EXPECT_NE(error_of([&] { Trainer t(parse_train_config(cfg)); }).find("has no records"), std::string::npos);
  cfg["tasks"][0].erase("train");
  EXPECT_NE(error_of([&] { Trainer t(parse_train_config(cfg)); }).find("task 's' has no 'train' data"),
            std::string::npos);
  Datasets data;
  data["other"].train = modula::testing::tiny_classification(2);
  EXPECT_NE(error_of([&] { Trainer t(parse_train_config(cfg), data); }).find("task 'other'"), std::string::npos);
}
