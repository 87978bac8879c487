// Config spellings change nothing in the numbers: rope_theta/rope_scaling at top level
// load the same model as transformers-5 rope_parameters; rope scaling changes logits.
#include <gtest/gtest.h>

#include <fstream>

#include "modula/backbone/layers.h"
#include "modula/backbone/registry.h"
#include "support/temp_dir.h"

using modula::testing::fixture;
using modula::testing::TempDir;

namespace {

torch::Tensor logits_with_config(const nlohmann::json& config) {
  TempDir dir;
  std::ofstream(dir / "config.json") << config.dump();
  modula::fs::copy_file(fixture("hf/models/llama/model.safetensors"), dir / "model.safetensors");
  auto model = modula::load_backbone(dir.path);
  torch::NoGradGuard g;
  modula::BackboneInput in;
  in.input_ids = torch::arange(1, 41, torch::kInt64).view({2, 20});
  return model->forward(in).logits;
}

TEST(RopeConfig, LegacySpellingEqualsTransformers5) {
  auto v5 = modula::io::load_hf_config(fixture("hf/models/llama")).raw;
  auto legacy = v5;
  legacy.erase("rope_parameters");
  legacy["rope_theta"] = 10000.0;
  EXPECT_TRUE(torch::equal(logits_with_config(v5), logits_with_config(legacy)));

  auto scaled_v5 = v5;
  scaled_v5["rope_parameters"] = {{"rope_theta", 10000.0}, {"rope_type", "linear"}, {"factor", 4.0}};
  auto scaled_legacy = legacy;
  scaled_legacy["rope_scaling"] = {{"type", "linear"}, {"factor", 4.0}};
  auto a = logits_with_config(scaled_v5);
  EXPECT_TRUE(torch::equal(a, logits_with_config(scaled_legacy)));
  EXPECT_FALSE(torch::allclose(a, logits_with_config(v5)));
}

TEST(RopeConfig, LinearScalingDividesPositions) {
  // Linear scaling by f equals feeding positions p / f (Chen et al. 2023).
  auto c = modula::io::load_hf_config(fixture("hf/models/llama"));
  auto scaled = c;
  scaled.rope_scaling.type = "linear";
  scaled.rope_scaling.factor = 4.0;
  auto pos = torch::arange(0, 12, torch::kInt64).view({1, 12});
  auto [cos_s, sin_s] = modula::Rotary(scaled).cos_sin(pos, torch::kFloat32);
  auto inv = 1.0 / torch::pow(10000.0, torch::arange(0, 16, 2).to(torch::kFloat32) / 16.0);
  auto freqs = (pos.to(torch::kFloat32) / 4.0).unsqueeze(-1) * inv;
  EXPECT_TRUE(torch::allclose(cos_s, torch::cat({freqs, freqs}, -1).cos(), 1e-6, 1e-6));
}

TEST(RopeConfig, Llama3KeepsHighFrequenciesAndScalesLowOnes) {
  auto c = modula::io::load_hf_config(fixture("hf/models/llama"));
  c.rope_theta = 500000.0;
  c.head_dim = 128;
  auto l3 = c;
  l3.rope_scaling = {"llama3", 8.0, 1.0, 4.0, 8192};
  // At position 1 the rotation angle is the frequency itself.
  auto angle = [](const modula::io::ModelConfig& cfg) {
    auto [cos, sin] = modula::Rotary(cfg).cos_sin(torch::ones({1, 1}, torch::kInt64), torch::kFloat32);
    return torch::atan2(sin, cos)[0][0].narrow(0, 0, 64);
  };
  auto base = angle(c), scaled = angle(l3);
  // Highest frequency (wavelength 2*pi < 8192/4): unchanged.
  EXPECT_NEAR(scaled[0].item<double>(), base[0].item<double>(), 1e-6);
  // Lowest frequency (wavelength > 8192): divided by the factor.
  EXPECT_NEAR(scaled[63].item<double>(), base[63].item<double>() / 8.0, 1e-9);
}

}  // namespace
