// Merge recipes: YAML typing, parameter gradients/filters, clear errors, and end-to-end
// runs over tiny models derived from the llama fixture.
#include <gtest/gtest.h>

#include <fstream>

#include "derived_models.h"
#include "modula/io/yaml.h"
#include "modula/merge/merge_recipe.h"
#include "support/temp_dir.h"

using namespace modula;
using nlohmann::json;

namespace {

std::string error_of(const json& recipe) {
  try {
    parse_recipe(recipe, "/r");
  } catch (const std::invalid_argument& e) {
    return e.what();
  }
  return "(no exception)";
}

json ties_recipe() {
  return json{{"merge_method", "ties"},
              {"base_model", "base"},
              {"models",
               {{{"model", "a"}, {"parameters", {{"weight", 0.7}, {"density", 0.5}}}},
                {{"model", "b"}, {"parameters", {{"weight", 0.3}, {"density", 0.5}}}}}}};
}

#define EXPECT_ERROR(recipe, text) EXPECT_NE(error_of(recipe).find(text), std::string::npos) << error_of(recipe)

}  // namespace

TEST(MergeRecipe, YamlScalarsAreTyped) {
  auto j = io::yaml_to_json("a: 1\nb: 0.5\nc: true\nd: ~\ne: text\nf: '12'\ng: [1, 2.5]\nh: {x: -3}\n");
  EXPECT_EQ(j["a"], 1);
  EXPECT_EQ(j["b"], 0.5);
  EXPECT_EQ(j["c"], true);
  EXPECT_TRUE(j["d"].is_null());
  EXPECT_EQ(j["e"], "text");
  EXPECT_EQ(j["f"], "12");  // quoted stays a string
  EXPECT_EQ(j["g"], json({1, 2.5}));
  EXPECT_EQ(j["h"]["x"], -3);
  EXPECT_THROW(io::yaml_to_json("a: [1, 2"), std::invalid_argument);
}

TEST(MergeRecipe, ParsesModelsPathsAndParameters) {
  auto r = parse_recipe(ties_recipe(), "/r");
  EXPECT_EQ(r.options.method(), "ties");
  EXPECT_EQ(r.base_model, "/r/base");
  ASSERT_EQ(r.models.size(), 2u);
  EXPECT_EQ(r.models[1].path, "/r/b");
  EXPECT_DOUBLE_EQ(r.models[0].parameters.at("weight").at("x", 0), 0.7);
  EXPECT_TRUE(r.options.normalized());  // ties' default
  EXPECT_EQ(r.tokenizer_source, "/r/base");
  // The base listed among the models (mergekit style) is not merged against itself.
  auto j = ties_recipe();
  j["models"].push_back({{"model", "base"}, {"parameters", {{"weight", 1}}}});
  EXPECT_EQ(parse_recipe(j, "/r").models.size(), 2u);
  // Sugar: weights / densities lists, one entry per model.
  auto k = json{
      {"merge_method", "task_arithmetic"}, {"base_model", "/abs/base"}, {"models", {"a", "b"}}, {"weights", {1, 2}}};
  auto rk = parse_recipe(k, "/r");
  EXPECT_EQ(rk.base_model, "/abs/base");
  EXPECT_DOUBLE_EQ(rk.models[1].parameters.at("weight").at("x", 0), 2);
}

// Gradients spread evenly over depth [0, 1] and interpolate linearly; filters pick by name.
TEST(MergeRecipe, ParamValueGradientsAndFilters) {
  auto g = ParamValue::parse(json({0.0, 0.5, 1.0}), "t");
  EXPECT_DOUBLE_EQ(g.at("x", 0.0), 0.0);
  EXPECT_DOUBLE_EQ(g.at("x", 0.25), 0.25);
  EXPECT_DOUBLE_EQ(g.at("x", 1.0), 1.0);
  auto f = ParamValue::parse(
      json::parse(R"([{"filter": "self_attn", "value": [0, 1]}, {"filter": "mlp", "value": 0.2}, {"value": 0.5}])"),
      "t");
  EXPECT_DOUBLE_EQ(f.at("model.layers.1.self_attn.q_proj.weight", 0.5), 0.5);
  EXPECT_DOUBLE_EQ(f.at("model.layers.1.self_attn.q_proj.weight", 1.0), 1.0);
  EXPECT_DOUBLE_EQ(f.at("model.layers.1.mlp.up_proj.weight", 1.0), 0.2);
  EXPECT_DOUBLE_EQ(f.at("model.norm.weight", 1.0), 0.5);
  auto only = ParamValue::parse(json::parse(R"([{"filter": "mlp", "value": 1}])"), "parameters.t");
  EXPECT_THROW(only.at("model.norm.weight", 0), std::invalid_argument);
  EXPECT_THROW(ParamValue::parse(json("high"), "parameters.t"), std::invalid_argument);
}

TEST(MergeRecipe, ErrorsNameTheField) {
  auto j = ties_recipe();
  j["merge_method"] = "soup";
  EXPECT_ERROR(j, "merge_method: 'soup' is not known");
  j = ties_recipe();
  j.erase("merge_method");
  EXPECT_ERROR(j, "merge_method: missing");
  j = ties_recipe();
  j["merge_methd"] = "ties";
  EXPECT_ERROR(j, "merge_methd: unknown key");
  j = ties_recipe();
  j.erase("base_model");
  EXPECT_ERROR(j, "base_model: merge_method ties needs a base_model");
  j = ties_recipe();
  j["models"][1]["parameters"].erase("weight");
  EXPECT_ERROR(j, "models[1].parameters.weight: missing");
  j = ties_recipe();
  j["models"][0].erase("model");
  EXPECT_ERROR(j, "models[0].model: missing");
  j = ties_recipe();
  j["models"] = json::array();
  EXPECT_ERROR(j, "models: expected a non-empty list");
  j = json{{"merge_method", "linear"}, {"models", {"a", "b"}}, {"weights", {1, 2, 3}}};
  EXPECT_ERROR(j, "weights: 3 entries for 2 models");
  j = json{{"merge_method", "linear"},
           {"models", {{{"model", "a"}, {"parameters", {{"weight", 1}, {"density", 0.5}}}}}}};
  EXPECT_ERROR(j, "models[0].parameters.density: merge_method linear takes no density");
  j = json{{"merge_method", "slerp"}, {"base_model", "a"}, {"models", {"a", "b"}}};
  EXPECT_ERROR(j, "parameters.t: slerp needs t");
  j = json{{"merge_method", "slerp"}, {"base_model", "a"}, {"models", {"b", "c"}}, {"parameters", {{"t", 0.5}}}};
  EXPECT_ERROR(j, "exactly one other model, got 2");
  j = ties_recipe();
  j["parameters"] = {{"normalize", "yes"}};
  EXPECT_ERROR(j, "parameters.normalize: expected true or false");
  j = ties_recipe();
  j["parameters"] = {{"consensus", "median"}};
  EXPECT_ERROR(j, "consensus 'median' is not known");
  j = ties_recipe();
  j["dtype"] = "float8";
  EXPECT_ERROR(j, "dtype: 'float8' is not float32, bfloat16 or float16");
  j = ties_recipe();
  j["models"][0]["parameters"]["weigth"] = 1;
  EXPECT_ERROR(j, "models[0].parameters.weigth: unknown parameter");
}

// task_arithmetic with λ = 1, w = 1: θ = θ_0 + τ_a + τ_b = θ_a + θ_b − θ_0, every tensor.
TEST(MergeRecipe, RunTaskArithmeticEndToEnd) {
  modula::testing::TempDir dir;
  modula::testing::write_merge_models(dir.path);
  auto j = json{{"merge_method", "task_arithmetic"},
                {"base_model", "base"},
                {"models", {"a", "b"}},
                {"parameters", {{"weight", 1.0}}},
                {"output", "out"}};
  auto report = run_merge(parse_recipe(j, dir.path));
  EXPECT_GT(report.tensors, 5);
  auto out = io::Checkpoint::open(dir / "out");
  auto base = io::Checkpoint::open(dir / "base"), a = io::Checkpoint::open(dir / "a"),
       b = io::Checkpoint::open(dir / "b");
  for (const auto& key : base.keys()) {
    auto want = a.get(key) + b.get(key) - base.get(key);
    EXPECT_TRUE(torch::allclose(out.get(key), want, 1e-5, 1e-5)) << key;
  }
  EXPECT_TRUE(fs::is_file(dir / "out/config.json"));
  EXPECT_TRUE(fs::is_file(dir / "out/merge_recipe.json"));
  auto model = load_backbone(dir / "out");  // loads as a model
  EXPECT_NE(model, nullptr);
}

// lambda 1e308 overflowed every tensor and wrote an all-inf/NaN checkpoint with exit 0.
TEST(MergeRecipe, NonFiniteResultIsRefusedBeforeWriting) {
  modula::testing::TempDir dir;
  modula::testing::write_merge_models(dir.path);
  auto j = json{{"merge_method", "task_arithmetic"},
                {"base_model", "base"},
                {"models", {"a", "b"}},
                {"parameters", {{"weight", 1.0}, {"lambda", 1e308}}},
                {"output", "out"}};
  try {
    run_merge(parse_recipe(j, dir.path));
    ADD_FAILURE() << "wrote a non-finite merge";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("[merge] tensor '"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("NaN or infinite"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(dir / "out/model.safetensors"));
}

// linear (no base): the mean of the models; bf16 output when asked.
TEST(MergeRecipe, RunLinearWritesTheAverage) {
  modula::testing::TempDir dir;
  modula::testing::write_merge_models(dir.path);
  auto j = json{{"merge_method", "linear"}, {"models", {"a", "b"}}, {"weights", {1, 1}}, {"output", "out"}};
  run_merge(parse_recipe(j, dir.path));
  auto out = io::Checkpoint::open(dir / "out"), a = io::Checkpoint::open(dir / "a"),
       b = io::Checkpoint::open(dir / "b");
  auto key = out.keys().front();
  EXPECT_TRUE(torch::allclose(out.get(key), (a.get(key) + b.get(key)) / 2, 1e-6, 1e-6));
  j["dtype"] = "bfloat16";
  j["output"] = "out16";
  run_merge(parse_recipe(j, dir.path));
  EXPECT_EQ(io::Checkpoint::open(dir / "out16").get(key).scalar_type(), torch::kBFloat16);
}

TEST(MergeRecipe, DareRunsAreReproducible) {
  modula::testing::TempDir dir;
  modula::testing::write_merge_models(dir.path);
  auto j = json{{"merge_method", "dare_ties"},
                {"base_model", "base"},
                {"models", {"a", "b"}},
                {"parameters", {{"weight", 0.5}, {"density", 0.5}}},
                {"seed", 11}};
  run_merge(parse_recipe(j, dir.path), dir / "x");
  run_merge(parse_recipe(j, dir.path), dir / "y");
  j["seed"] = 12;
  run_merge(parse_recipe(j, dir.path), dir / "z");
  auto x = io::Checkpoint::open(dir / "x"), y = io::Checkpoint::open(dir / "y"), z = io::Checkpoint::open(dir / "z");
  bool differs = false;
  for (const auto& key : x.keys()) {
    EXPECT_TRUE(torch::equal(x.get(key), y.get(key))) << key;
    differs = differs || !torch::equal(x.get(key), z.get(key));
  }
  EXPECT_TRUE(differs);
}

TEST(MergeRecipe, RunErrorsNameTheModelAndTensor) {
  modula::testing::TempDir dir;
  modula::testing::write_merge_models(dir.path);
  auto j = json{{"merge_method", "task_arithmetic"},
                {"base_model", "base"},
                {"models", {"a", "missing"}},
                {"parameters", {{"weight", 1.0}}},
                {"output", "out"}};
  try {
    run_merge(parse_recipe(j, dir.path));
    FAIL();
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("models[1].model: '" + (dir / "missing") + "' is not a folder"),
              std::string::npos)
        << e.what();
  }
  // A model whose embedding has another shape.
  fs::make_dirs(dir / "wide");
  fs::copy_file(dir / "a/config.json", dir / "wide/config.json");
  auto ckpt = io::Checkpoint::open(dir / "a");
  io::NamedTensors tensors;
  for (const auto& key : ckpt.keys())
    tensors.emplace_back(key, key == "model.embed_tokens.weight" ? torch::zeros({7, 3}) : ckpt.get(key));
  io::save_safetensors(dir / "wide/model.safetensors", tensors);
  j["models"] = {"a", "wide"};
  try {
    run_merge(parse_recipe(j, dir.path));
    FAIL();
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("tensor 'model.embed_tokens.weight': models[1].model ('" + (dir / "wide") +
                                         "') has shape [7, 3]"),
              std::string::npos)
        << e.what();
  }
  j["models"] = {"a"};
  j["output"] = "base";
  EXPECT_THROW(run_merge(parse_recipe(j, dir.path)), std::invalid_argument);  // never overwrite an input
}

TEST(MergeRecipe, LoadsYamlFiles) {
  modula::testing::TempDir dir;
  std::ofstream(dir / "r.yaml")
      << "merge_method: slerp\nbase_model: a\nmodels:\n  - model: a\n  - model: b\n"
         "parameters:\n  t:\n    - filter: self_attn\n      value: [0, 1]\n    - value: 0.5\n";
  auto r = load_recipe(dir / "r.yaml");
  EXPECT_EQ(r.options.method(), "slerp");
  ASSERT_EQ(r.models.size(), 1u);
  EXPECT_EQ(r.models[0].path, dir / "b");
  EXPECT_DOUBLE_EQ(r.parameters.at("t").at("model.layers.0.self_attn.q_proj.weight", 0.0), 0.0);
  std::ofstream(dir / "bad.yaml") << "merge_method: slerp\nmodels: [a\n";
  try {
    load_recipe(dir / "bad.yaml");
    FAIL();
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("bad.yaml: invalid YAML"), std::string::npos) << e.what();
  }
}
