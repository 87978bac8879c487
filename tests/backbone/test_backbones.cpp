// Backbones against the HF reference outputs, load/save round trips and dtype handling.
#include <gtest/gtest.h>

#include <fstream>

#include "modula/backbone/registry.h"
#include "modula/conformance.h"
#include "support/temp_dir.h"

using modula::testing::fixture;
using modula::testing::TempDir;

namespace {

const std::vector<std::string> kArchs = {"llama", "qwen2", "mistral", "gpt2", "bert", "bert-cls", "xlm-roberta"};

class ReferenceModel : public ::testing::TestWithParam<std::string> {};

TEST_P(ReferenceModel, MatchesTransformers) {
  auto r = modula::run_case(fixture("hf/models/" + GetParam()));
  EXPECT_EQ(r.status, modula::CaseStatus::Pass) << modula::format(r);
  EXPECT_LT(r.max_abs_diff, 1e-4);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, ReferenceModel, ::testing::ValuesIn(kArchs));

torch::Tensor logits_of(modula::Backbone& m, const torch::Tensor& ids) {
  torch::NoGradGuard g;
  modula::BackboneInput in;
  in.input_ids = ids;
  return m.forward(in).logits;
}

torch::Tensor probe_ids() { return torch::arange(3, 15, torch::kInt64).view({2, 6}); }

TEST(Backbone, SaveThenLoadGivesIdenticalLogits) {
  for (const std::string arch : {"llama", "gpt2", "xlm-roberta"}) {
    auto model = modula::load_backbone(fixture("hf/models/" + arch));
    TempDir dir;
    modula::save_backbone(*model, dir.path);
    auto again = modula::load_backbone(dir.path);
    EXPECT_TRUE(torch::equal(logits_of(*model, probe_ids()), logits_of(*again, probe_ids()))) << arch;
  }
}

TEST(Backbone, HalfPrecisionCheckpointsLoadIntoFp32) {
  auto model = modula::load_backbone(fixture("hf/models/llama"));
  for (auto dtype : {torch::kBFloat16, torch::kHalf}) {
    TempDir dir;
    modula::fs::copy_file(fixture("hf/models/llama/config.json"), dir / "config.json");
    modula::io::NamedTensors tensors;
    for (auto& [k, v] : modula::state_dict(*model)) tensors.emplace_back(k, v.to(dtype));
    modula::io::save_safetensors(dir / "model.safetensors", tensors);
    auto low = modula::load_backbone(dir.path);
    EXPECT_EQ(low->parameters().front().scalar_type(), torch::kFloat32);
    auto diff = (logits_of(*low, probe_ids()) - logits_of(*model, probe_ids())).abs().max().item<double>();
    EXPECT_LT(diff, dtype == torch::kHalf ? 5e-2 : 2e-1) << c10::toString(dtype);
    EXPECT_GT(diff, 0.0);  // the rounding really happened
  }
}

TEST(Backbone, MissingTensorIsNamed) {
  TempDir dir;
  modula::fs::copy_file(fixture("hf/models/gpt2/config.json"), dir / "config.json");
  auto full = modula::io::SafetensorsFile::open(fixture("hf/models/gpt2/model.safetensors"));
  modula::io::NamedTensors tensors;
  for (const auto& k : full.keys())
    if (k != "transformer.h.1.mlp.c_fc.weight") tensors.emplace_back(k, full.get(k));
  modula::io::save_safetensors(dir / "model.safetensors", tensors);
  try {
    modula::load_backbone(dir.path);
    FAIL() << "expected an error";
  } catch (const modula::io::SafetensorsError& e) {
    EXPECT_NE(std::string(e.what()).find("transformer.h.1.mlp.c_fc.weight"), std::string::npos) << e.what();
  }
}

TEST(Backbone, ShapeMismatchIsNamed) {
  TempDir dir;
  modula::fs::copy_file(fixture("hf/models/llama/config.json"), dir / "config.json");
  auto full = modula::io::SafetensorsFile::open(fixture("hf/models/llama/model.safetensors"));
  modula::io::NamedTensors tensors;
  for (const auto& k : full.keys()) tensors.emplace_back(k, k == "model.norm.weight" ? torch::ones({63}) : full.get(k));
  modula::io::save_safetensors(dir / "model.safetensors", tensors);
  try {
    modula::load_backbone(dir.path);
    FAIL() << "expected an error";
  } catch (const modula::io::SafetensorsError& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find("model.norm.weight"), std::string::npos) << msg;
    EXPECT_NE(msg.find("[63]"), std::string::npos) << msg;
  }
}

TEST(Backbone, BareModelCheckpointLoadsWithoutPrefix) {
  // A checkpoint of LlamaModel (keys without "model.") loads into the bare backbone.
  TempDir dir;
  auto config = modula::io::load_hf_config(fixture("hf/models/llama"));
  auto j = config.raw;
  j["architectures"] = {"LlamaModel"};
  std::ofstream(dir / "config.json") << j.dump();
  auto full = modula::io::SafetensorsFile::open(fixture("hf/models/llama/model.safetensors"));
  modula::io::NamedTensors tensors;
  for (const auto& k : full.keys())
    if (k.rfind("model.", 0) == 0) tensors.emplace_back(k.substr(6), full.get(k));
  modula::io::save_safetensors(dir / "model.safetensors", tensors);
  auto bare = modula::load_backbone(dir.path);
  auto ref = modula::load_backbone(fixture("hf/models/llama"));
  EXPECT_EQ(bare->head(), modula::Head::None);
  torch::NoGradGuard g;
  modula::BackboneInput in;
  in.input_ids = probe_ids();
  EXPECT_TRUE(torch::allclose(bare->forward(in).last_hidden_state, ref->forward(in).last_hidden_state));
}

TEST(Backbone, BadInputsGiveClearErrors) {
  auto model = modula::load_backbone(fixture("hf/models/llama"));
  modula::BackboneInput in;
  in.input_ids = torch::zeros({2, 3}, torch::kInt32);
  EXPECT_THROW(model->forward(in), std::invalid_argument);
  in.input_ids = torch::zeros({2, 3}, torch::kInt64);
  in.attention_mask = torch::ones({2, 4}, torch::kInt64);
  EXPECT_THROW(model->forward(in), std::invalid_argument);
  in.attention_mask = torch::Tensor();
  in.input_ids = torch::full({1, 2}, 100000, torch::kInt64);
  EXPECT_THROW(model->forward(in), std::invalid_argument);
}

}  // namespace
