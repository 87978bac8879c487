// LoRA banks stored in int8 (LoraBankImpl::store_as(torch::kChar)): one scale per matrix row,
// every path equal to a float bank holding the dequantized weights, the rounding bounded by
// half a step, and the misuses (NaN weights, a later to(dtype)) refused with a message.
#include <gtest/gtest.h>

#include "composition/stored_bank_paths.h"
#include "modula/composition/lora_bank.h"
#include "modula/modules/lora.h"

using namespace modula;

namespace {

// What int8 storage should hold, computed here from the definition: per row of the last
// dimension, step = max|w| / 127, w ≈ step · round(w / step).
torch::Tensor dequantized(const torch::Tensor& w) {
  auto step = w.abs().amax(-1, true) / 127.0;
  step = torch::where(step > 0, step, torch::ones_like(step));
  return torch::round(w / step) * step;
}

LoraBank bank_like(const LoraBank& b, const torch::Tensor& A, const torch::Tensor& B) {
  LoraBank out(LoraBankOptions(b->in_features(), b->out_features(), b->num_modules()).r(b->rank()));
  torch::NoGradGuard no_grad;
  out->lora_A.copy_(A), out->lora_B.copy_(B), out->scaling.copy_(b->scaling);
  return out;
}

}  // namespace

TEST(LoraBank, StoredInInt8ComputesInTheInputDtype) {
  torch::manual_seed(11);
  const int64_t in = 37, out = 29, M = 4, r = 19;  // not multiples of 8: the kernels' tails
  LoraBank exact(LoraBankOptions(in, out, M).r(r).alpha(2.0 * r));
  {
    torch::NoGradGuard no_grad;
    exact->lora_B.normal_();
    exact->lora_A[2].zero_();  // an all-zero module: scale 1, zeros
    exact->scaling.copy_(torch::linspace(0.5, 2.0, M));
  }
  auto rounded = bank_like(exact, dequantized(exact->lora_A.detach()), dequantized(exact->lora_B.detach()));
  auto q = bank_like(exact, exact->lora_A.detach(), exact->lora_B.detach());
  q->store_as(torch::kChar);
  EXPECT_EQ(q->lora_A.scalar_type(), torch::kChar);
  EXPECT_EQ(q->lora_B.scalar_type(), torch::kChar);
  EXPECT_EQ(4 * q->lora_B.nbytes(), exact->lora_B.nbytes());  // a quarter of float32
  EXPECT_FALSE(q->lora_A.requires_grad());                    // int8 is for inference
  EXPECT_EQ(q->lora_A_scale.sizes(), (std::vector<int64_t>{M, r}));
  EXPECT_EQ(q->lora_B_scale.sizes(), (std::vector<int64_t>{M, out}));
  EXPECT_EQ(q->named_parameters().size(), 2u);
  EXPECT_EQ(q->named_buffers().size(), 3u);                                    // scaling and the two row scales
  EXPECT_EQ(q->lora_A.abs().amax(-1).to(torch::kInt).min().item<int>(), 0);    // the zero module
  EXPECT_EQ(q->lora_B.abs().amax(-1).to(torch::kInt).min().item<int>(), 127);  // each row's largest is ±127
  // The rounding: at most half a step per weight, and the dequantized values are rounded's.
  auto deq_A = q->lora_A.to(torch::kFloat) * q->lora_A_scale.unsqueeze(-1);
  EXPECT_TRUE(torch::allclose(deq_A, rounded->lora_A, 1e-6, 1e-7));
  EXPECT_LE((deq_A - exact->lora_A).abs().div(q->lora_A_scale.unsqueeze(-1)).max().item<double>(), 0.5 + 1e-4);

  modula::testing::expect_stored_bank_paths(*q, *rounded, *exact);
  const std::vector<int64_t> ids = {3, -1, 0, 2, 3, 1};
  const auto N = static_cast<int64_t>(ids.size());
  auto idx = torch::tensor(ids).unsqueeze(1);
  auto w = torch::rand({N, 1}) + 0.5;
  {  // bfloat16 activations: computed in bf16 from the dequantized weights
    torch::NoGradGuard no_grad;
    auto x = torch::randn({N, 4, in}).to(torch::kBFloat16);
    auto y = q->selected({x, {}, nullptr}, idx, w);
    EXPECT_EQ(y.scalar_type(), torch::kBFloat16);
    EXPECT_TRUE(torch::allclose(y.to(torch::kFloat), rounded->selected({x, {}, nullptr}, idx, w).to(torch::kFloat),
                                2e-2, 2e-2));
  }
  // int8 again: the same integers (the rounded weights are their own rounding); back to
  // float32: the dequantized weights, trainable again, the row scales emptied.
  auto before = q->lora_A.clone();
  q->store_as(torch::kChar);
  EXPECT_TRUE(torch::equal(q->lora_A, before));
  q->store_as(torch::kFloat32);
  EXPECT_TRUE(q->lora_A.requires_grad());
  EXPECT_EQ(q->lora_A_scale.numel(), 0);
  EXPECT_TRUE(torch::allclose(q->lora_B, rounded->lora_B, 1e-6, 1e-7));
  // From bfloat16: quantized from the bf16 values.
  q->store_as(torch::kBFloat16);
  q->store_as(torch::kChar);
  EXPECT_EQ(q->lora_A.scalar_type(), torch::kChar);
  EXPECT_TRUE(
      torch::allclose(q->lora_A.to(torch::kFloat) * q->lora_A_scale.unsqueeze(-1), rounded->lora_A, 1e-2, 1e-3));
}

TEST(LoraBank, Int8StorageRefusesNaNAndLaterConversions) {
  torch::manual_seed(12);
  LoraBank bank(LoraBankOptions(8, 8, 2).r(4));
  {
    torch::NoGradGuard no_grad;
    bank->lora_B.normal_();
    bank->lora_B[1][3][2] = std::numeric_limits<float>::quiet_NaN();
  }
  try {
    bank->store_as(torch::kChar);
    FAIL() << "NaN quantized";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("store_as(int8): lora_B has NaN or Inf values"), std::string::npos)
        << e.what();
  }
  EXPECT_EQ(bank->lora_A.scalar_type(), torch::kFloat32);  // unchanged
  {
    torch::NoGradGuard no_grad;
    bank->lora_B[1][3][2] = 0.5;
  }
  bank->store_as(torch::kChar);
  bank->to(torch::kFloat32);  // converts the int8 values like any parameter: no longer the weights
  torch::NoGradGuard no_grad;
  auto x = torch::randn({2, 1, 8});
  try {
    bank->selected({x, {}, nullptr}, torch::tensor({{0}, {1}}), torch::ones({2, 1}));
    FAIL() << "a converted int8 bank ran";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("converted since by to(dtype)"), std::string::npos) << e.what();
  }
  EXPECT_THROW(bank->mixed({x, {}, nullptr}, torch::ones({2, 2})), std::invalid_argument);
  EXPECT_THROW(bank->store_as(torch::kFloat32), std::invalid_argument);  // nothing to store from bare integers
  EXPECT_THROW(bank->store_as(torch::kChar), std::invalid_argument);
}

// A view bank stored in int8 quantizes each re-stacked copy without autograd (members of
// different ranks: the padding rows stay zero); with autograd it stacks the members unquantized
// in the graph, and gradients reach them.
TEST(LoraBank, ViewBankStoredInInt8) {
  torch::manual_seed(13);
  std::vector<std::shared_ptr<LoraImpl>> members;
  for (int64_t r : {3, 2}) {
    members.push_back(std::make_shared<LoraImpl>(LoraOptions(9, 7).r(r).alpha(2.0 * r)));
    torch::NoGradGuard no_grad;
    members.back()->lora_B.normal_();
  }
  auto bank = LoraBankImpl::view(members);
  bank->store_as(torch::kChar);
  auto x = torch::randn({2, 1, 9});
  auto idx = torch::tensor({{1}, {0}});
  auto w = torch::ones({2, 1});
  {
    torch::NoGradGuard no_grad;
    auto y = bank->selected({x, {}, nullptr}, idx, w);
    EXPECT_EQ(bank->lora_A.scalar_type(), torch::kChar);
    EXPECT_EQ(members[0]->lora_A.scalar_type(), torch::kFloat32);
    const auto& l = *members[1];
    auto want = l.options.scaling() * torch::matmul(torch::matmul(x[0], dequantized(l.lora_A.detach()).t()),
                                                    dequantized(l.lora_B.detach()).t());
    EXPECT_TRUE(torch::allclose(y[0], want, 1e-5, 1e-6));
    auto exact = l.options.scaling() * torch::matmul(torch::matmul(x[0], l.lora_A.t()), l.lora_B.t());
    EXPECT_FALSE(torch::allclose(y[0], exact, 1e-6, 1e-7)) << "not rounded?";
  }
  auto y = bank->selected({x, {}, nullptr}, idx, w);  // with autograd
  EXPECT_EQ(bank->lora_A.scalar_type(), torch::kFloat32);
  y.sum().backward();
  ASSERT_TRUE(members[0]->lora_A.grad().defined());
  EXPECT_GT(members[0]->lora_A.grad().abs().sum().item<double>(), 0);
}
