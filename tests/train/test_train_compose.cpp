// `compose` in a train config: the spec is applied over the run's modules; fuse(...) trains
// only its fusion (members and backbone untouched), route(task, ...) sends each task's
// batches to its module, checkpoints carry the fusion, and bad specs name `compose`.
#include <gtest/gtest.h>

#include <fstream>

#include "modula/io/safetensors.h"
#include "modula/io/yaml.h"
#include "modula/train/config.h"
#include "modula/train/trainer.h"
#include "modula/util/fs.h"
#include "tiny.h"

using namespace modula;
using namespace modula::train;
using modula::testing::fixture;
using modula::testing::TempDir;
using json = nlohmann::json;

namespace {

template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const ConfigError& e) {
    return e.what();
  } catch (const std::exception& e) {
    return std::string("<not a ConfigError> ") + e.what();
  }
  return "<no exception>";
}

json bottleneck() { return {{"peft_type", "MODULA_BOTTLENECK"}, {"config", "pfeiffer"}}; }

json base(const TempDir& dir, const std::string& out) {
  return {{"model", fixture("hf/models/llama")},
          {"tokenizer", modula::testing::write_tiny_tokenizer(dir / "tokenizer.json", false)},
          {"output", dir / out},
          {"seed", 5},
          {"optim", {{"lr", 1e-2}, {"max_steps", 20}, {"batch_size", 4}}},
          {"tasks", {{{"name", "lm"}, {"type", "causal_lm"}}}}};
}

std::map<std::string, torch::Tensor> tensors_of(const std::string& file) {
  auto f = io::SafetensorsFile::open(file);
  std::map<std::string, torch::Tensor> out;
  for (const auto& k : f.keys()) out[k] = f.get(k).clone();
  return out;
}

void expect_identical(const std::string& a, const std::string& b) {
  auto ta = tensors_of(a), tb = tensors_of(b);
  ASSERT_EQ(ta.size(), tb.size()) << a << " vs " << b;
  for (auto& [k, v] : ta) {
    ASSERT_TRUE(tb.count(k)) << k;
    EXPECT_TRUE(torch::equal(v.to(torch::kFloat32), tb.at(k).to(torch::kFloat32))) << k;
  }
}

// Two bottleneck adapters a, b trained on the LM task (once per process).
const std::string& trained_adapters() {
  static TempDir dir;
  static bool done = false;
  if (!done) {
    auto cfg = base(dir, "pre");
    cfg["modules"] = {{{"name", "a"}, {"config", bottleneck()}}, {{"name", "b"}, {"config", bottleneck()}}};
    Datasets data;
    data["lm"].train = modula::testing::tiny_text(10);
    train::train(parse_train_config(cfg), data);
    done = true;
  }
  static const std::string modules = dir / "pre/modules";
  return modules;
}

json fuse_config(const TempDir& d) {
  auto cfg = base(d, "out");
  const auto& pre = trained_adapters();
  cfg["modules"] = {{{"name", "a"}, {"path", pre + "/a"}}, {{"name", "b"}, {"path", pre + "/b"}}};
  cfg["compose"] = "fuse(a, b)";
  cfg["save_model"] = true;  // writes the backbone (after the composition is removed)
  return cfg;
}

Datasets lm_data() {
  Datasets data;
  data["lm"].train = modula::testing::tiny_text(10);
  return data;
}

std::map<int64_t, double> step_losses(const std::string& file) {
  std::map<int64_t, double> out;
  std::ifstream in(file);
  for (std::string line; std::getline(in, line);) {
    auto j = json::parse(line);
    if (j["type"] == "step") out[j["global_step"].get<int64_t>()] = j["loss"].get<double>();
  }
  return out;
}

}  // namespace

// ---- config --------------------------------------------------------------------------

TEST(TrainCompose, ConfigTakesTextOrMapping) {
  auto j = io::yaml_to_json(
      "model: m\nmodules:\n  - {name: a, config: {peft_type: MODULA_BOTTLENECK, config: pfeiffer}}\n"
      "  - {name: b, config: {peft_type: MODULA_BOTTLENECK, config: pfeiffer}}\n"
      "tasks:\n  - {name: x, type: causal_lm}\ncompose: {fuse: [a, b]}\n");
  EXPECT_EQ(parse_train_config(j, "c.yaml").compose, "fuse(a, b)");
  j["compose"] = "stack( a ,b)";
  EXPECT_EQ(parse_train_config(j, "c.yaml").compose, "stack(a, b)");
  j.erase("compose");
  EXPECT_EQ(parse_train_config(j, "c.yaml").compose, "");
}

TEST(TrainCompose, BadSpecsNameCompose) {
  json cfg = {{"model", "m"},
              {"modules", {{{"name", "a"}, {"config", bottleneck()}}, {{"name", "b"}, {"config", bottleneck()}}}},
              {"tasks", {{{"name", "x"}, {"type", "causal_lm"}}, {{"name", "y"}, {"type", "causal_lm"}}}}};
  auto with = [&](const json& spec) {
    auto c = cfg;
    c["compose"] = spec;
    return error_of([&] { parse_train_config(c, "c.yaml"); });
  };
  auto has = [](const std::string& e, const std::string& s) { return e.find(s) != std::string::npos; };
  auto e = with("fuse(a, nope)");
  EXPECT_TRUE(has(e, "c.yaml: 'compose'") && has(e, "nope")) << e;
  e = with("fuse(a,");
  EXPECT_TRUE(has(e, "'compose'") && !has(e, "<not a ConfigError>")) << e;
  e = with(json{{"mix", {"a", "b"}}});
  EXPECT_TRUE(has(e, "'compose'") && !has(e, "<not a ConfigError>")) << e;
  e = with("");
  EXPECT_TRUE(has(e, "'compose': must not be empty")) << e;
  e = with(3);
  EXPECT_TRUE(has(e, "'compose': must be a spec string")) << e;
  e = with("route(lang, a, b)");
  EXPECT_TRUE(has(e, "'compose'") && has(e, "routes by 'task'") && has(e, "learned router")) << e;
  e = with("route(task, a)");
  EXPECT_TRUE(has(e, "'compose'") && has(e, "one per task (2")) << e;
  auto per_task = cfg;
  per_task["tasks"][0]["modules"] = {"a"};
  per_task["compose"] = "fuse(a, b)";
  e = error_of([&] { parse_train_config(per_task, "c.yaml"); });
  EXPECT_TRUE(has(e, "'tasks[0].modules' names 'a', a member of 'compose'")) << e;
  auto continual = cfg;
  continual.erase("modules");
  continual["continual"] = {{"enabled", true}};
  continual["compose"] = "fuse(a, b)";
  e = error_of([&] { parse_train_config(continual, "c.yaml"); });
  EXPECT_TRUE(has(e, "'compose': not supported with continual learning")) << e;
}

// ---- runs ----------------------------------------------------------------------------

TEST(TrainCompose, FuseTrainsOnlyTheFusion) {
  TempDir d;
  std::vector<double> losses;
  std::vector<std::string> notes;
  Callbacks cb;
  cb.on_step = [&](const StepInfo& s) { losses.push_back(s.loss); };
  cb.on_message = [&](const std::string& m) { notes.push_back(m); };
  auto r = train::train(parse_train_config(fuse_config(d)), lm_data(), cb);
  ASSERT_EQ(losses.size(), 20u);
  double first = 0, last = 0;
  for (size_t i = 0; i < 5; ++i) first += losses[i] / 5, last += losses[losses.size() - 1 - i] / 5;
  EXPECT_LT(last, first) << first << " -> " << last;  // nothing but the fusion trains (causal LM: no head)

  // The fusion folder: every site's W_v moved away from its near-identity start.
  const std::string fusion = d / "out/compose/fuse0";
  ASSERT_TRUE(fs::is_file(fusion + "/adapter_model.safetensors"));
  int64_t fusion_params = 0, sites = 0;
  for (auto& [k, v] : tensors_of(fusion + "/adapter_model.safetensors")) {
    fusion_params += v.numel();
    if (k.find("value.weight") == std::string::npos) continue;
    ++sites;
    auto eye = torch::eye(v.size(0), v.options());
    EXPECT_GT((v - eye).abs().max().item<double>(), 1e-4) << k;
  }
  EXPECT_GT(sites, 0);
  EXPECT_EQ(r.trainable_parameters, fusion_params);
  std::ifstream spec(d / "out/compose/spec.txt");
  std::string line;
  std::getline(spec, line);
  EXPECT_EQ(line, "fuse(a, b)");
  bool noted = false;
  for (auto& n : notes) noted |= n.find("compose: fuse(a, b) (1 fusion(s)") != std::string::npos;
  EXPECT_TRUE(noted);

  // The members (frozen by fuse) and the backbone are bit-identical to what went in.
  for (const char* m : {"a", "b"})
    expect_identical(trained_adapters() + "/" + m + "/adapter_model.safetensors",
                     d / "out/modules" + "/" + m + "/adapter_model.safetensors");
  expect_identical(fixture("hf/models/llama/model.safetensors"), d / "out/model/model.safetensors");
}

TEST(TrainCompose, ResumeReproducesTheFusion) {
  TempDir a, b;
  auto make = [](const TempDir& d) {
    auto cfg = fuse_config(d);
    cfg.erase("save_model");
    cfg["optim"]["max_steps"] = 12;
    cfg["checkpoint"] = {{"every", 4}, {"keep", 2}};
    return cfg;
  };
  train::train(parse_train_config(make(a)), lm_data());
  Callbacks stop;
  stop.on_step = [](const StepInfo& s) {
    if (s.step == 10) throw std::runtime_error("interrupted");
  };
  EXPECT_THROW(train::train(parse_train_config(make(b)), lm_data(), stop), std::runtime_error);
  auto ck = tensors_of(b / "out/checkpoints/step-000000008/tensors.safetensors");
  bool has_fusion = false;
  for (auto& [k, v] : ck) has_fusion |= k.rfind("compose/fuse0/", 0) == 0;
  EXPECT_TRUE(has_fusion);
  auto r = train::train(parse_train_config(make(b)), lm_data(), {}, /*resume=*/true);
  EXPECT_TRUE(r.resumed);
  expect_identical(a / "out/compose/fuse0/adapter_model.safetensors",
                   b / "out/compose/fuse0/adapter_model.safetensors");
  EXPECT_EQ(step_losses(a / "out/metrics.jsonl"), step_losses(b / "out/metrics.jsonl"));
}

// route(task, a, b): task 0's batches go through a, task 1's through b. With b frozen
// (trainable: false) and a fresh, only a changes; task 1 still trains its head.
TEST(TrainCompose, RouteByTaskIndex) {
  TempDir d;
  const auto& pre = trained_adapters();
  auto cfg = base(d, "out");
  cfg["modules"] = {{{"name", "a"}, {"path", pre + "/a"}}, {{"name", "b"}, {"path", pre + "/b"}, {"trainable", false}}};
  cfg["tasks"] = {{{"name", "lm"}, {"type", "causal_lm"}}, {{"name", "sent"}, {"type", "sequence_classification"}}};
  cfg["compose"] = "route(task, a, b)";
  cfg["optim"]["max_steps"] = 12;
  Datasets data = lm_data();
  data["sent"].train = modula::testing::tiny_classification(8);
  data["lm"].eval = modula::testing::tiny_text(4);
  data["sent"].eval = data["sent"].train;
  std::set<std::string> seen;
  Callbacks cb;
  cb.on_step = [&](const StepInfo& s) { seen.insert(s.task); };
  auto r = train::train(parse_train_config(cfg), data, cb);
  EXPECT_EQ(seen, (std::set<std::string>{"lm", "sent"}));
  EXPECT_TRUE(r.eval.count("lm") && r.eval.count("sent"));
  // a (routed for task 0) trained; b was not trainable and is not written.
  auto before = tensors_of(pre + "/a/adapter_model.safetensors"),
       after = tensors_of(d / "out/modules/a/adapter_model.safetensors");
  double moved = 0;
  for (auto& [k, v] : before)
    moved += (v.to(torch::kFloat32) - after.at(k).to(torch::kFloat32)).abs().sum().item<double>();
  EXPECT_GT(moved, 0);
  EXPECT_FALSE(fs::exists(d / "out/modules/b"));
}

// stack(a, b) over frozen adapters runs each member once: the same run as both adapters
// enabled natively (members switched back on would run twice and change the losses).
TEST(TrainCompose, StackEqualsNativeStacking) {
  const auto& pre = trained_adapters();
  auto run = [&](const TempDir& d, bool compose) {
    auto cfg = base(d, "out");
    cfg["modules"] = {{{"name", "a"}, {"path", pre + "/a"}, {"trainable", false}},
                      {{"name", "b"}, {"path", pre + "/b"}, {"trainable", false}}};
    cfg["tasks"] = {{{"name", "sent"}, {"type", "sequence_classification"}}};
    cfg["optim"]["max_steps"] = 6;
    if (compose) cfg["compose"] = "stack(a, b)";
    Datasets data;
    data["sent"].train = data["sent"].eval = modula::testing::tiny_classification(8);
    return train::train(parse_train_config(cfg), data);
  };
  TempDir x, y;
  auto native = run(x, false), composed = run(y, true);
  EXPECT_NEAR(composed.eval.at("sent").at("loss"), native.eval.at("sent").at("loss"), 1e-5);
  EXPECT_NEAR(composed.final_loss, native.final_loss, 1e-5);
}
