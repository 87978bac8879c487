// CUDA vs CPU (the test-backend-ops idea): every reference model in bf16 on the GPU
// against fp32 on the CPU, and KV-cache decoding on the GPU. Skips without a GPU.
#include <gtest/gtest.h>

#include "modula/backbone/generate.h"
#include "modula/backbone/registry.h"
#include "support/temp_dir.h"

using modula::testing::fixture;

namespace {

class CudaMatchesCpu_CUDA : public ::testing::TestWithParam<std::string> {};

TEST_P(CudaMatchesCpu_CUDA, Bf16LogitsCloseToFp32) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  auto cpu = modula::load_backbone(fixture("hf/models/" + GetParam()));
  modula::LoadOptions o;
  o.device = torch::kCUDA;
  auto gpu = modula::load_backbone(fixture("hf/models/" + GetParam()), o);
  EXPECT_EQ(gpu->parameters().front().scalar_type(), torch::kBFloat16);
  auto e = modula::io::SafetensorsFile::open(fixture("hf/models/" + GetParam() + "/expected.safetensors"));
  torch::NoGradGuard g;
  modula::BackboneInput in;
  in.input_ids = e.get("input_ids").clone();
  in.attention_mask = e.get("attention_mask").clone();
  auto want = cpu->forward(in).logits;
  in.input_ids = in.input_ids.cuda();
  in.attention_mask = in.attention_mask.cuda();
  auto got = gpu->forward(in).logits.to(torch::kFloat32).cpu();
  auto mask = want.dim() == 3 ? e.get("attention_mask").to(torch::kBool).unsqueeze(-1).expand_as(want)
                              : torch::ones_like(want, torch::kBool);
  auto rel = (got - want).abs().masked_select(mask).max().item<double>() / want.abs().max().item<double>();
  EXPECT_LT(rel, 0.05) << GetParam();
}

INSTANTIATE_TEST_SUITE_P(Fixtures, CudaMatchesCpu_CUDA,
                         ::testing::Values("llama", "qwen2", "mistral", "gpt2", "bert", "bert-cls", "xlm-roberta"));

TEST(Generate_CUDA, GreedyOnGpuInFp32EqualsCpu) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  auto cpu = modula::load_backbone(fixture("hf/models/llama"));
  modula::LoadOptions o;
  o.device = torch::kCUDA;
  o.dtype = torch::kFloat32;
  auto gpu = modula::load_backbone(fixture("hf/models/llama"), o);
  modula::GenerateOptions g;
  g.max_new_tokens = 12;
  EXPECT_EQ(modula::generate(*cpu, {4, 8, 15, 16}, g), modula::generate(*gpu, {4, 8, 15, 16}, g));
}

}  // namespace
