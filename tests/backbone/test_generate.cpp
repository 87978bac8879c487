// Generation: greedy equals argmax of the full forward; sampling is seeded; filters work.
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>

#include "modula/backbone/generate.h"
#include "modula/backbone/registry.h"
#include "support/temp_dir.h"

using modula::testing::fixture;

namespace {

TEST(Generate, GreedyEqualsRepeatedFullForward) {
  auto model = modula::load_backbone(fixture("hf/models/qwen2"));
  std::vector<int64_t> prompt = {5, 17, 42, 7};
  modula::GenerateOptions o;
  o.max_new_tokens = 6;
  auto got = modula::generate(*model, prompt, o);
  ASSERT_EQ(got.size(), 6u);
  std::vector<int64_t> seq = prompt;
  torch::NoGradGuard g;
  for (int i = 0; i < 6; ++i) {
    modula::BackboneInput in;
    in.input_ids = torch::tensor(seq, torch::kInt64).view({1, -1});
    int64_t next = model->forward(in).logits[0][-1].argmax().item<int64_t>();
    EXPECT_EQ(got[i], next) << "step " << i;
    seq.push_back(next);
  }
}

TEST(Generate, SamplingIsSeededAndStreams) {
  auto model = modula::load_backbone(fixture("hf/models/gpt2"));
  modula::GenerateOptions o;
  o.max_new_tokens = 8;
  o.temperature = 1.0;
  o.top_k = 50;
  o.top_p = 0.9;
  o.seed = 7;
  std::vector<int64_t> streamed;
  auto a = modula::generate(*model, {1, 2, 3}, o, [&](int64_t id) {
    streamed.push_back(id);
    return true;
  });
  auto b = modula::generate(*model, {1, 2, 3}, o);
  EXPECT_EQ(a, b);
  EXPECT_EQ(a, streamed);
  o.seed = 8;
  EXPECT_NE(modula::generate(*model, {1, 2, 3}, o), a);
}

TEST(Generate, TopKOneIsGreedyAndTopPKeepsNucleus) {
  torch::Generator gen = at::detail::createCPUGenerator(0);
  auto logits = torch::tensor({0.0f, 3.0f, 1.0f, 2.9f});
  modula::GenerateOptions o;
  o.temperature = 1.0;
  o.top_k = 1;
  for (int i = 0; i < 20; ++i) EXPECT_EQ(modula::sample_next(logits, o, gen), 1);
  o.top_k = 0;
  o.top_p = 0.5;  // token 1 alone holds ~46% of the mass, 1 and 3 together ~88%
  for (int i = 0; i < 50; ++i) {
    auto id = modula::sample_next(logits, o, gen);
    EXPECT_TRUE(id == 1 || id == 3) << id;
  }
}

TEST(Generate, StopsAtStopIdAndValidates) {
  auto model = modula::load_backbone(fixture("hf/models/llama"));
  modula::GenerateOptions o;
  o.max_new_tokens = 5;
  auto free_run = modula::generate(*model, {3, 4}, o);
  o.stop_ids = {free_run[1]};
  auto stopped = modula::generate(*model, {3, 4}, o);
  EXPECT_EQ(stopped.size(), free_run[0] == free_run[1] ? 1u : 2u);
  o.top_p = 0;
  EXPECT_THROW(modula::generate(*model, {3, 4}, o), std::invalid_argument);
  auto bert = modula::load_backbone(fixture("hf/models/bert"));
  EXPECT_THROW(modula::generate(*bert, {3, 4}, modula::GenerateOptions{}), std::invalid_argument);
}

}  // namespace

// Regression (issue 14): Llama generation with -n 1000000000 ran until killed, and prompts and
// generations ran past max_position_embeddings without a word; every backbone refuses up front.
TEST(Generate, PromptPlusNewTokensBeyondTheContextIsAnError) {
  for (const char* name : {"hf/models/llama", "hf/models/gpt2", "hf/models/qwen2"}) {
    auto model = modula::load_backbone(fixture(name));
    const int64_t positions = model->config().max_position_embeddings;
    modula::GenerateOptions o;
    o.max_new_tokens = 1000000000;
    try {
      modula::generate(*model, {1, 2, 3}, o);
      ADD_FAILURE() << name << ": no exception";
    } catch (const std::invalid_argument& e) {
      EXPECT_NE(std::string(e.what()).find("exceeds the model's context of " + std::to_string(positions)),
                std::string::npos)
          << e.what();
    }
    o.max_new_tokens = 1;
    std::vector<int64_t> long_prompt(static_cast<size_t>(positions), 1);
    EXPECT_THROW(modula::generate(*model, long_prompt, o), std::invalid_argument) << name;
    long_prompt.pop_back();
    EXPECT_EQ(modula::generate(*model, long_prompt, o).size(), 1u) << name;
  }
}
