// project(): sites reading one input (q/k/v, gate/up) as one GEMM over their packed weights
// give what each site gives alone — with modules attached, with gradients to the modules
// and the input, after in-place writes and after a dtype move — and the packing keeps the
// parameters (names, values) and costs no second copy of the weights.
#include <gtest/gtest.h>

#include "modula/backbone/fused_linear.h"
#include "modula/backbone/registry.h"
#include "modula/modules/ia3.h"
#include "modula/modules/lora.h"
#include "support/temp_dir.h"

using modula::testing::fixture;

namespace {

struct Sites {
  modula::Linear q{modula::LinearOptions(16, 16)}, k{modula::LinearOptions(16, 8)}, v{modula::LinearOptions(16, 8)};
  std::vector<modula::LinearImpl*> all() { return {q.get(), k.get(), v.get()}; }
  std::vector<torch::Tensor> each(const torch::Tensor& x) { return {q(x), k(x), v(x)}; }
};

// A LoRA with a non-zero B, so its delta shows in the output.
std::shared_ptr<modula::LoraImpl> lora(int64_t in, int64_t out) {
  auto m = modula::Lora(modula::LoraOptions(in, out).r(4).alpha(8)).ptr();
  torch::NoGradGuard no_grad;
  m->lora_B.normal_();
  return m;
}

void expect_close(const std::vector<torch::Tensor>& a, const std::vector<torch::Tensor>& b, double rtol = 1e-5) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) EXPECT_TRUE(torch::allclose(a[i], b[i], rtol, 1e-6)) << "output " << i;
}

modula::LinearImpl& linear_at(modula::Backbone& model, const std::string& path) {
  for (const auto& item : model.named_modules())
    if (item.key() == path) return dynamic_cast<modula::LinearImpl&>(*item.value());
  throw std::runtime_error("no module " + path);
}

}  // namespace

TEST(FusedLinear, OneGemmEqualsEachSiteWithModules) {
  torch::manual_seed(3);
  Sites s;
  s.q->attach("lora", lora(16, 16));
  auto scale = modula::Ia3(modula::Ia3Options(16, 8)).ptr();
  torch::NoGradGuard no_grad;
  scale->ia3_l.uniform_(0.5, 1.5);
  s.v->attach("ia3", scale);
  auto x = torch::randn({2, 3, 16});
  const auto q_weight = s.q->weight.clone();
  auto expected = s.each(x);
  ASSERT_FALSE(modula::weights_packed(s.all()));
  expect_close(modula::project(s.all(), x), expected);
  // Packed: the weights are row blocks of one tensor, the values and names as before.
  EXPECT_TRUE(modula::weights_packed(s.all()));
  EXPECT_TRUE(torch::equal(s.q->weight, q_weight));
  EXPECT_EQ(s.q->named_parameters().size(), 4u);  // weight, bias, lora_A, lora_B
  EXPECT_TRUE(s.k->weight.storage().is_alias_of(s.q->weight.storage()));
  // Writes into a packed weight (a checkpoint load, a merge) reach the fused GEMM.
  s.k->weight.copy_(torch::randn({8, 16}));
  s.q->bias.fill_(0.25);
  expect_close(modula::project(s.all(), x), s.each(x));
  EXPECT_TRUE(modula::weights_packed(s.all()));
}

TEST(FusedLinear, GradientsReachTheModulesAndTheInput) {
  torch::manual_seed(4);
  Sites s;
  for (auto* site : s.all()) site->weight.set_requires_grad(false);
  s.q->attach("lora", lora(16, 16));
  s.v->attach("lora", lora(16, 8));
  auto x = torch::randn({2, 3, 16}, torch::requires_grad());
  auto grads = [&](bool fused) {
    for (auto& p : s.q->parameters()) p.mutable_grad() = torch::Tensor();
    for (auto& p : s.v->parameters()) p.mutable_grad() = torch::Tensor();
    x.mutable_grad() = torch::Tensor();
    auto ys = fused ? modula::project(s.all(), x) : s.each(x);
    (ys[0].square().sum() + ys[1].sin().sum() + ys[2].cos().sum()).backward();
    return std::vector<torch::Tensor>{x.grad().clone(), s.q->module("lora")->parameters()[0].grad().clone(),
                                      s.q->module("lora")->parameters()[1].grad().clone(),
                                      s.v->module("lora")->parameters()[1].grad().clone()};
  };
  auto fused = grads(true);
  EXPECT_TRUE(modula::weights_packed(s.all()));
  expect_close(fused, grads(false), 1e-4);
}

TEST(FusedLinear, WeightsThatNeedGradientsRunEachSite) {
  torch::manual_seed(5);
  Sites s;
  auto x = torch::randn({4, 16});
  auto ys = modula::project(s.all(), x);
  EXPECT_FALSE(modula::weights_packed(s.all()));  // a fused weight would not pass the gradient back
  (ys[0].sum() + ys[1].sum() + ys[2].sum()).backward();
  for (auto* site : s.all()) ASSERT_TRUE(site->weight.grad().defined());
  EXPECT_TRUE(torch::allclose(s.k->weight.grad(), x.sum(0).expand({8, 16})));
}

TEST(FusedLinear, AFeedForwardIa3OnTheInputRunsEachSite) {
  torch::manual_seed(6);
  Sites s;
  auto scale = modula::Ia3(modula::Ia3Options(16, 8).feedforward(true)).ptr();
  torch::NoGradGuard no_grad;
  scale->ia3_l.uniform_(0.5, 1.5);
  s.k->attach("ia3", scale);
  auto x = torch::randn({5, 16});
  expect_close(modula::project(s.all(), x), s.each(x));
  EXPECT_FALSE(modula::weights_packed(s.all()));
  scale->enabled = false;  // no longer transforms the input: one GEMM again
  expect_close(modula::project(s.all(), x), s.each(x));
  EXPECT_TRUE(modula::weights_packed(s.all()));
}

TEST(FusedLinear, BackbonesPackOnFirstUseAndAgainAfterADtypeMove) {
  for (std::string arch : {"llama", "qwen2", "bert"}) {
    auto model = modula::load_backbone(fixture("hf/models/" + arch));
    model->eval();
    const std::string attn = arch == "bert" ? "bert.encoder.layer.0.attention.self." : "model.layers.0.self_attn.";
    const auto [q, k, v] =
        arch == "bert" ? std::make_tuple("query", "key", "value") : std::make_tuple("q_proj", "k_proj", "v_proj");
    std::vector<modula::LinearImpl*> qkv = {&linear_at(*model, attn + q), &linear_at(*model, attn + k),
                                            &linear_at(*model, attn + v)};
    const auto names = model->named_parameters().keys();
    std::vector<torch::Tensor> before;
    for (const auto& p : model->parameters()) before.push_back(p.clone());
    torch::NoGradGuard no_grad;
    modula::BackboneInput in;
    in.input_ids = torch::tensor({{1, 5, 9, 3}});
    ASSERT_FALSE(modula::weights_packed(qkv)) << arch;
    auto out = model->forward(in);
    EXPECT_TRUE(modula::weights_packed(qkv)) << arch;
    if (arch != "bert") {
      const std::string mlp = "model.layers.0.mlp.";
      EXPECT_TRUE(modula::weights_packed({&linear_at(*model, mlp + "gate_proj"), &linear_at(*model, mlp + "up_proj")}));
    }
    EXPECT_EQ(model->named_parameters().keys(), names) << arch;
    auto after = model->parameters();
    for (size_t i = 0; i < before.size(); ++i)
      EXPECT_TRUE(torch::equal(before[i], after[i])) << arch << " " << names[i];
    // A dtype move replaces the tensors: packed again at the next forward, same result.
    model->to(torch::kFloat64);
    EXPECT_FALSE(modula::weights_packed(qkv)) << arch;
    auto out64 = model->forward(in);
    EXPECT_TRUE(modula::weights_packed(qkv)) << arch;
    EXPECT_EQ(qkv[0]->weight.scalar_type(), torch::kFloat64);
    const auto& a = out.logits.defined() ? out.logits : out.last_hidden_state;
    const auto& b = out64.logits.defined() ? out64.logits : out64.last_hidden_state;
    EXPECT_TRUE(torch::allclose(a.to(torch::kFloat64), b, 1e-4, 1e-5)) << arch;
  }
}
