// Incremental decoding with the KV cache gives the logits of the full forward, for
// every decoder architecture, with and without padding.
#include <gtest/gtest.h>

#include "modula/backbone/registry.h"
#include "support/temp_dir.h"

using modula::testing::fixture;

namespace {

class KVCacheEqualsFull : public ::testing::TestWithParam<std::string> {};

TEST_P(KVCacheEqualsFull, PrefillThenOneTokenSteps) {
  auto model = modula::load_backbone(fixture("hf/models/" + GetParam()));
  torch::NoGradGuard g;
  auto ids = torch::randint(0, model->config().vocab_size, {2, 10}, torch::kInt64);
  auto mask = torch::ones({2, 10}, torch::kInt64);
  mask[1].narrow(0, 0, 3).zero_();  // left padding in row 1
  modula::BackboneInput full;
  full.input_ids = ids;
  full.attention_mask = mask;
  auto want = model->forward(full).logits;

  modula::KVCache cache;
  std::vector<torch::Tensor> got;
  const int64_t prefill = 4;
  for (int64_t start = 0; start < 10;) {
    int64_t len = start == 0 ? prefill : 1;
    modula::BackboneInput step;
    step.input_ids = ids.narrow(1, start, len);
    step.attention_mask = mask.narrow(1, 0, start + len);
    step.cache = &cache;
    got.push_back(model->forward(step).logits);
    start += len;
  }
  EXPECT_EQ(cache.length(), 10);
  auto stitched = torch::cat(got, 1);
  // Compare the positions a query may attend from (row 1's padded queries are undefined).
  auto keep = mask.to(torch::kBool).unsqueeze(-1).expand_as(want);
  auto diff = (stitched - want).abs().masked_select(keep).max().item<double>();
  EXPECT_LT(diff, 1e-5) << GetParam();
}

INSTANTIATE_TEST_SUITE_P(Decoders, KVCacheEqualsFull, ::testing::Values("llama", "qwen2", "mistral", "gpt2"));

TEST(KVCache, SelectRowsKeepsChosenRows) {
  modula::KVCache cache;
  cache.append(0, torch::arange(6.).view({3, 1, 2, 1}), torch::arange(6.).view({3, 1, 2, 1}));
  cache.select_rows(torch::tensor({2, 0}, torch::kInt64));
  EXPECT_EQ(cache.keys[0].size(0), 2);
  EXPECT_EQ(cache.keys[0][0][0][0][0].item<double>(), 4.0);
}

// Steps write their slots in place: one buffer for many steps, the same values as
// concatenation, and nothing written outside a tensor the cache did not allocate.
TEST(KVCache, AppendsInPlaceAndEqualsConcatenation) {
  torch::manual_seed(3);
  modula::KVCache cache;
  auto want = torch::randn({2, 3, 5, 4});
  cache.append(0, want, want);
  const void* buffer = nullptr;
  int64_t reallocations = 0;
  for (int step = 0; step < 40; ++step) {
    auto k = torch::randn({2, 3, 1, 4});
    auto [keys, values] = cache.append(0, k, k);
    want = torch::cat({want, k}, 2);
    ASSERT_TRUE(torch::equal(keys, want)) << "step " << step;
    ASSERT_TRUE(torch::equal(values, want));
    if (keys.storage().data() != buffer) ++reallocations, buffer = keys.storage().data();
  }
  EXPECT_EQ(reallocations, 1);  // the first step copies into a buffer with room; the rest write in place
  cache.select_rows(torch::tensor({1}, torch::kInt64));  // a new layout: copied once, then in place again
  auto k = torch::randn({1, 3, 2, 4});
  EXPECT_TRUE(torch::equal(cache.append(0, k, k).first, torch::cat({want.narrow(0, 1, 1), k}, 2)));
  // A cache that starts as a view into someone else's tensor never writes past the view.
  auto outside = torch::zeros({1, 1, 8, 2});
  modula::KVCache borrowed;
  borrowed.keys = {outside.narrow(2, 0, 3)};
  borrowed.values = {outside.narrow(2, 0, 3)};
  borrowed.append(0, torch::ones({1, 1, 1, 2}), torch::ones({1, 1, 1, 2}));
  EXPECT_EQ(outside.abs().sum().item<double>(), 0.0);
}

}  // namespace
