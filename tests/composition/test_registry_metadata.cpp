// Registry matrix: routing by a per-example metadata field (see registry_matrix.h). The
// data's right completion depends on the record's `language` ("alice lives in" is paris in
// en, london in de; bob the other way round), so only a module that sees the language can
// fit it: POLY routed by language, a hypernetwork conditioned on language and
// compose route(language, a, m) each train, save, reload and evaluate to the same loss.
#include "composition/registry_matrix.h"
#include "modula/io/yaml.h"
#include "modula/train/data.h"

using namespace modula;
using namespace modula::train;
using namespace modula::testing::matrix;
using modula::testing::error_of;
using modula::testing::fixture;
using modula::testing::TempDir;
using json = nlohmann::json;

namespace {

json language_record(int i) {
  const bool alice = i % 2, en = (i / 2) % 2;
  return {{"prompt", alice ? "alice lives in" : "bob lives in"},
          {"completion", alice == en ? "paris" : "london"},
          {"language", en ? "en" : "de"}};
}

Datasets language_data() {
  Datasets data;
  for (int i = 0; i < 16; ++i) data["qa"].train.push_back(language_record(i));
  data["qa"].eval = data["qa"].train;
  return data;
}

const json kByLanguage = {{"metadata", {{{"field", "language"}}}}};                      // values from the data
const json kEnDe = {{"metadata", {{{"field", "language"}, {"values", {"en", "de"}}}}}};  // declared
const json kLora = {{"peft_type", "LORA"}, {"r", 2}, {"target_modules", {"q_proj", "v_proj", "down_proj"}}};

json poly(const std::string& key, int64_t n_tasks = 2) {
  return {{"peft_type", "POLY"},         {"r", 2}, {"n_tasks", n_tasks}, {"n_skills", 4}, {"routing_key", key},
          {"target_modules", kAllLinear}};
}
json hyper(const std::string& key) {
  return {{"peft_type", "MODULA_HYPER_LORA"},      {"num_tasks", 2}, {"r", 2}, {"hidden", 8}, {"routing_key", key},
          {"target_modules", {"q_proj", "v_proj"}}};
}

json with(json cfg, const json& extra) {
  cfg.update(extra);
  return cfg;
}

bool has(const std::string& e, const std::string& s) { return e.find(s) != std::string::npos; }

void write_jsonl(const std::string& path, const std::vector<json>& rows) {
  std::ofstream out(path);
  for (const auto& r : rows) out << r.dump() << "\n";
}

torch::Tensor logits(Backbone& model) {
  BackboneInput in;
  in.input_ids = torch::tensor({{1, 25, 24, 23}}, torch::kInt64);  // <s> alice lives in
  return model.forward(in).logits;
}

}  // namespace

TEST(RegistryMatrix, PolytroponRoutedByLanguage) {
  train_save_reload("llama", poly("language"), 3e-2, json::array(), language_data(), kByLanguage);
}

TEST(RegistryMatrix, HypernetworkConditionedOnLanguage) {
  train_save_reload("llama", hyper("language"), 3e-2, json::array(), language_data(), kEnDe);
}

TEST(RegistryMatrix, RouteByLanguageInCompose) {
  json before = {{{"name", "a"}, {"config", kLora}}};
  train_save_reload("llama", kLora, 3e-2, before, language_data(), with(kEnDe, {{"compose", "route(language, a, m)"}}));
}

// Examples carry one id per metadata field (integers compared as their string form); the
// batch holds them as [B, F].
TEST(RegistryMetadata, ExamplesAndBatchesCarryTheIds) {
  TempDir d;
  auto tok = text::Tokenizer::from_file(modula::testing::write_tiny_tokenizer(d / "t.json", false));
  auto mc = io::load_hf_config(fixture("hf/models/llama"));
  TaskConfig t;
  t.name = "qa", t.type = TaskType::CausalLM;
  std::vector<json> rows = {language_record(0), language_record(2), language_record(3)};
  rows[0]["level"] = 10, rows[1]["level"] = "2", rows[2]["level"] = 2;
  auto fields = resolve_metadata({{"language", {}}, {"level", {}}}, {{"mem", &rows}});
  EXPECT_EQ(fields[0].values, (std::vector<std::string>{"de", "en"}));
  EXPECT_EQ(fields[1].values, (std::vector<std::string>{"2", "10"}));  // numerically sorted
  auto enc = Encoding::build(t, rows, *tok, mc, fields);
  auto ex = enc.encode(rows, "mem");
  EXPECT_EQ(ex[0].metadata, (std::vector<int64_t>{0, 1}));
  EXPECT_EQ(ex[1].metadata, (std::vector<int64_t>{1, 0}));
  auto b = collate({&ex[0], &ex[1], &ex[2]}, enc.pad_id(), false).to(torch::kCPU);
  ASSERT_TRUE(b.metadata.defined());
  EXPECT_TRUE(b.metadata.equal(torch::tensor({{0, 1}, {1, 0}, {1, 0}}, torch::kInt64)));
}

// A trained language-routed folder works where `modula generate --meta language=ID` loads it
// (load_module_folders with task 0 and the context holding "language"): the output follows
// the language, and without it the error says which --meta to give. The folder keeps
// routing_key; a module routed by "task" writes none (PEFT's layout).
TEST(RegistryMetadata, FoldersKeepTheRoutingKeyForGenerate) {
  TempDir d;
  auto cfg = with(run_config(d, "llama", "a",
                             {{{"name", "h"}, {"config", hyper("language")}},
                              {{"name", "p"}, {"config", poly("language")}},
                              {{"name", "t"}, {"config", poly("task", 1)}}},
                             3e-2, 8),
                  kEnDe);
  run(cfg, language_data());
  auto config_of = [&](const std::string& m) {
    return json::parse(std::ifstream(d / ("a/modules/" + m + "/adapter_config.json")));
  };
  EXPECT_EQ(config_of("h").value("routing_key", ""), "language");
  EXPECT_EQ(config_of("p").value("routing_key", ""), "language");
  EXPECT_FALSE(config_of("t").contains("routing_key"));
  for (const std::string m : {"h", "p"}) {
    auto model = load_backbone(fixture("hf/models/llama"));
    auto ctx = std::make_shared<RoutingContext>();
    ctx->set("task", torch::tensor({0}, torch::kInt64));
    auto mods = load_module_folders(*model, {d / ("a/modules/" + m)}, 0, ctx);
    auto e = error_of([&] { logits(*model); });
    EXPECT_TRUE(has(e, "language")) << m << ": " << e;
    ctx->set("language", torch::tensor({0}, torch::kInt64));
    auto en = logits(*model);
    ctx->set("language", torch::tensor({1}, torch::kInt64));
    auto de = logits(*model);
    EXPECT_FALSE(torch::allclose(en, de)) << m << ": the language does not change the output";
  }
}

TEST(RegistryMetadata, DataErrorsNameFileLineFieldAndValue) {
  TempDir d;
  auto cfg = with(run_config(d, "llama", "a", {{{"name", "m"}, {"config", poly("language")}}}, 3e-2, 2), kByLanguage);
  std::vector<json> train;
  for (int i = 0; i < 4; ++i) train.push_back(language_record(i));
  // A training record without the field.
  auto missing = train;
  missing[2].erase("language");
  write_jsonl(d / "train.jsonl", missing);
  cfg["tasks"][0]["train"] = d / "train.jsonl";
  auto e = error_of([&] { run(cfg, Datasets{}); });
  EXPECT_TRUE(has(e, d / "train.jsonl:3: missing metadata field 'language' (record has: completion, prompt")) << e;
  // In-memory data is named by its task.
  Datasets mem;
  mem["qa"].train = missing;
  e = error_of([&] { run(with(cfg, kEnDe), mem); });
  EXPECT_TRUE(has(e, "task 'qa' train:3: missing metadata field 'language'") && has(e, "values: en, de")) << e;
  // An eval value outside the values (here the ones seen in training: de, en).
  write_jsonl(d / "train.jsonl", train);
  auto eval = train;
  eval[1]["language"] = "fr";
  write_jsonl(d / "eval.jsonl", eval);
  cfg["tasks"][0]["eval"] = d / "eval.jsonl";
  e = error_of([&] { run(cfg, Datasets{}); });
  EXPECT_TRUE(has(e, d / "eval.jsonl:2: unknown value \"fr\" of metadata field 'language' (values: de, en)")) << e;
  mem["qa"].train = train, mem["qa"].eval = eval;
  e = error_of([&] { run(cfg, mem); });
  EXPECT_TRUE(has(e, "task 'qa' eval:2: unknown value \"fr\"")) << e;
  // A value of another type.
  eval[1]["language"] = 1.5;
  mem["qa"].eval = eval;
  e = error_of([&] { run(cfg, mem); });
  EXPECT_TRUE(has(e, "task 'qa' eval:2: metadata field 'language' must be a string or an integer, got 1.5")) << e;
}

TEST(RegistryMetadata, ConfigErrorsNameFileAndKey) {
  TempDir d;
  auto base = with(
      run_config(d, "llama", "a", {{{"name", "a"}, {"config", kLora}}, {{"name", "b"}, {"config", kLora}}}, 3e-2, 2),
      kByLanguage);
  auto parse = [](const json& c) { return error_of<ConfigError>([&] { parse_train_config(c, "c.yaml"); }); };
  // route(language, ...) needs one argument per value: checked at parse time when the
  // values are declared, by the trainer once the data gave them.
  auto three = base;
  three["metadata"][0]["values"] = {"en", "de", "fr"};
  three["compose"] = "route(language, a, b)";
  auto e = parse(three);
  EXPECT_TRUE(has(e,
                  "c.yaml: 'compose': route(language, ...) has 2 arguments; it needs one per value of metadata "
                  "field 'language' (3: en, de, fr, in that order)"))
      << e;
  auto from_data = base;
  from_data["modules"].push_back({{"name", "c"}, {"config", kLora}});
  from_data["compose"] = "route(language, a, b, c)";
  EXPECT_EQ(parse(from_data), "<no exception>");
  e = error_of<ConfigError>([&] { run(from_data, language_data()); });
  EXPECT_TRUE(has(e, "a.yaml: 'compose': route(language, ...) has 3 arguments") && has(e, "(2: de, en")) << e;
  auto undeclared = base;
  undeclared["compose"] = "route(dialect, a, b)";
  e = parse(undeclared);
  EXPECT_TRUE(has(e, "c.yaml: 'compose': route(dialect, ...)") && has(e, "declared: language")) << e;
  // A routing_key must be "task" or a declared field; n_tasks / num_tasks must cover the values.
  auto key = base;
  key["modules"] = {{{"name", "m"}, {"config", poly("lang")}}};
  e = parse(key);
  EXPECT_TRUE(has(e,
                  "c.yaml: 'modules[0].config.routing_key' is 'lang', which is neither 'task' nor a field in "
                  "'metadata' (declared: language)"))
      << e;
  key["modules"] = {{{"name", "m"}, {"config", hyper("language")}}};
  key["modules"][0]["config"]["num_tasks"] = 1;
  EXPECT_EQ(parse(key), "<no exception>");
  e = error_of<ConfigError>([&] { run(key, language_data()); });
  EXPECT_TRUE(has(e, "'modules[0].config.num_tasks' is 1 but metadata field 'language' has 2 values (de, en)")) << e;
  key["modules"] = {{{"name", "m"}, {"config", with(kLora, {{"routing_key", "language"}})}}};
  EXPECT_TRUE(has(parse(key), "'modules[0].config.routing_key': only POLY and MODULA_HYPER_LORA")) << parse(key);
  // The metadata list itself.
  auto meta = [&](const json& m) { return parse(with(base, {{"metadata", m}})); };
  EXPECT_TRUE(has(meta({{{"field", "task"}}}), "c.yaml: 'metadata[0].field': 'task' is reserved"));
  EXPECT_TRUE(has(meta({"language", "language"}), "'metadata[1].field': 'language' is declared twice"));
  EXPECT_TRUE(has(meta({{{"field", "language"}, {"values", {"en", "en"}}}}), "'metadata[0].values' lists 'en' twice"));
  EXPECT_TRUE(has(meta({{{"field", "language"}, {"value", {"en"}}}}), "unknown key 'metadata[0].value'"));
  EXPECT_TRUE(has(meta({{{"field", "language"}, {"values", {1.5}}}}), "must hold strings or integers, found 1.5"));
}

// The config of docs/training.md ("Routing by metadata") is valid.
TEST(RegistryMetadata, DocsConfigParses) {
  const std::string yaml = R"yaml(
model: models/llama
metadata:
  - {field: language, values: [en, de]}
tasks:
  - {name: qa, type: causal_lm, train: qa.jsonl, eval: qa_dev.jsonl}
modules:
  - {name: poly,  config: {peft_type: POLY, r: 2, n_tasks: 2, n_skills: 4, routing_key: language, target_modules: all-linear}}
  - {name: hyper, config: {peft_type: MODULA_HYPER_LORA, num_tasks: 2, r: 2, hidden: 16, routing_key: language,
                           target_modules: [q_proj, v_proj]}}
  - {name: en,    config: {peft_type: LORA, r: 4, target_modules: [q_proj, v_proj]}}
  - {name: de,    config: {peft_type: LORA, r: 4, target_modules: [q_proj, v_proj]}}
compose: "route(language, en, de)"
)yaml";
  auto c = parse_train_config(io::yaml_to_json(yaml, "run.yaml"), "run.yaml");
  ASSERT_EQ(c.metadata.size(), 1u);
  EXPECT_EQ(c.metadata[0].values, (std::vector<std::string>{"en", "de"}));
  EXPECT_EQ(c.compose, "route(language, en, de)");
}
