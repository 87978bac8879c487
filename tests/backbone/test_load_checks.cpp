// Checkpoints that used to load and give garbage with exit 0 (issue 14): a config with fewer
// layers than the checkpoint, NaN/inf weights, an integer tensor for a float weight.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>

#include "modula/backbone/generate.h"
#include "modula/backbone/registry.h"
#include "support/errors.h"
#include "support/temp_dir.h"

using modula::testing::error_of;
using modula::testing::fixture;
using modula::testing::TempDir;

namespace {

// The llama fixture in `dir`, with config key changes and one tensor replaced by `swap(key, t)`.
template <typename Swap>
void doctored_llama(const TempDir& dir, const nlohmann::json& config_changes, Swap swap) {
  auto config = modula::io::load_hf_config(fixture("hf/models/llama")).raw;
  config.update(config_changes);
  std::ofstream(dir / "config.json") << config.dump();
  auto full = modula::io::SafetensorsFile::open(fixture("hf/models/llama/model.safetensors"));
  modula::io::NamedTensors tensors;
  for (const auto& k : full.keys()) tensors.emplace_back(k, swap(k, full.get(k)));
  modula::io::save_safetensors(dir / "model.safetensors", tensors);
}

torch::Tensor same(const std::string&, const torch::Tensor& t) { return t; }

TEST(LoadChecks, ConfigWithFewerLayersThanTheCheckpointIsAnError) {
  TempDir dir;
  doctored_llama(dir, {{"num_hidden_layers", 1}}, same);
  auto error = error_of<modula::io::SafetensorsError>([&] { modula::load_backbone(dir.path); });
  EXPECT_NE(error.find("not used by the model"), std::string::npos) << error;
  EXPECT_NE(error.find("model.layers.1."), std::string::npos) << error;
  EXPECT_NE(error.find("num_hidden_layers (1)"), std::string::npos) << error;
}

TEST(LoadChecks, NonFiniteWeightsAreNamed) {
  for (double bad : {std::nan(""), HUGE_VAL}) {
    TempDir dir;
    doctored_llama(dir, nlohmann::json::object(), [&](const std::string& k, const torch::Tensor& t) {
      return k == "model.layers.0.mlp.up_proj.weight" ? t.clone().index_put_({0, 0}, bad) : t;
    });
    auto error = error_of<modula::io::SafetensorsError>([&] { modula::load_backbone(dir.path); });
    EXPECT_NE(error.find("'model.layers.0.mlp.up_proj.weight' holds NaN or infinite values"), std::string::npos)
        << error;
  }
}

TEST(LoadChecks, IntegerTensorForAFloatWeightIsNamed) {
  TempDir dir;
  doctored_llama(dir, nlohmann::json::object(), [](const std::string& k, const torch::Tensor& t) {
    return k == "model.norm.weight" ? t.to(torch::kInt32) : t;
  });
  auto error = error_of<modula::io::SafetensorsError>([&] { modula::load_backbone(dir.path); });
  EXPECT_NE(error.find("'model.norm.weight' has dtype Int"), std::string::npos) << error;
}

TEST(LoadChecks, UnusedHeadsOutsideTheLayersStillLoad) {
  // bert: cls.predictions.* and the fixtures' other heads are reported, not refused.
  modula::LoadReport report;
  modula::load_backbone(fixture("hf/models/bert-cls"), {}, &report);
  for (const auto& k : report.unused_keys) EXPECT_EQ(k.find(".layer."), std::string::npos) << k;
}

TEST(LoadChecks, NanTemperatureIsRefused) {
  modula::GenerateOptions o;
  o.temperature = std::nan("");
  EXPECT_NE(error_of<std::invalid_argument>([&] { o.validate(); }).find("temperature"), std::string::npos);
  o.temperature = HUGE_VAL;
  EXPECT_NE(error_of<std::invalid_argument>([&] { o.validate(); }).find("temperature"), std::string::npos);
}

}  // namespace

// Regression (issue 14): num_hidden_layers: 1000000 built every layer (gigabytes) before the
// checkpoint was read; now the layer count is checked against the checkpoint first.
TEST(LoadChecks, ConfigWithMoreLayersThanTheCheckpointFailsBeforeBuilding) {
  TempDir dir;
  doctored_llama(dir, {{"num_hidden_layers", 1000000}}, same);
  auto error = error_of<modula::ConfigError>([&] { modula::load_backbone(dir.path); });
  EXPECT_NE(error.find("num_hidden_layers 1000000 but the checkpoint"), std::string::npos) << error;
  EXPECT_NE(error.find("holds 2 layers"), std::string::npos) << error;
}

// The same for the other sizes: hidden_size 200000 beside the tiny checkpoint (and a huge
// vocabulary or position table) would allocate gigabytes before the first shape check.
TEST(LoadChecks, ConfigSizesFarBeyondTheCheckpointFailBeforeBuilding) {
  for (const auto& change :
       {nlohmann::json{{"hidden_size", 200000}, {"head_dim", 50000}}, nlohmann::json{{"vocab_size", 100000000}},
        nlohmann::json{{"intermediate_size", 50000000}}, nlohmann::json{{"max_position_embeddings", 1000000000}}}) {
    TempDir dir;
    doctored_llama(dir, change, same);
    auto error = error_of<modula::ConfigError>([&] { modula::load_backbone(dir.path); });
    EXPECT_NE(error.find("config.json: its sizes (hidden_size"), std::string::npos) << change << ": " << error;
    EXPECT_NE(error.find("but the checkpoint"), std::string::npos) << error;
  }
}
