// Polytropon / MHR with PEFT POLY semantics: fixture logits, train/eval routing, save/load,
// MHR-z (routing only) and MHR-μ (averaged skills).
#include <gtest/gtest.h>

#include "modula/backbone/registry.h"
#include "modula/composition/poly_lora.h"
#include "modula/composition/registry.h"
#include "modula/io/peft.h"
#include "modula/io/safetensors.h"
#include "support/temp_dir.h"

using namespace modula;
using modula::testing::fixture;
using modula::testing::TempDir;
using json = nlohmann::json;

namespace {

std::shared_ptr<Backbone> llama() { return load_backbone(fixture("hf/models/llama")); }

struct PolyFixture {
  io::SafetensorsFile expected = io::SafetensorsFile::open(fixture("hf/adapters/llama-poly/expected.safetensors"));
  BackboneInput input() const {
    BackboneInput in;
    in.input_ids = expected.get("input_ids").clone();
    in.attention_mask = expected.get("attention_mask").clone();
    return in;
  }
  torch::Tensor task_ids() const { return expected.get("task_ids").clone(); }
};

torch::Tensor masked(const torch::Tensor& logits, const torch::Tensor& mask) {
  return logits.index({mask.to(torch::kBool)});
}

}  // namespace

TEST(Poly, FixtureLogitsInEvalMode) {
  PolyFixture f;
  auto model = llama();
  auto ctx = std::make_shared<RoutingContext>();
  auto poly = load_poly_adapter(*model, fixture("hf/adapters/llama-poly"), ctx);
  EXPECT_EQ(poly.modules.size(), 6u);
  model->eval();
  ctx->set("task", f.task_ids());
  torch::NoGradGuard no_grad;
  auto in = f.input();
  auto got = model->forward(in).logits;
  EXPECT_TRUE(
      torch::allclose(masked(got, in.attention_mask), masked(f.expected.get("logits"), in.attention_mask), 1e-4, 1e-4));
}

TEST(Poly, TrainModeSamplesEvalModeIsDeterministic) {
  PolyFixture f;
  auto model = llama();
  auto ctx = std::make_shared<RoutingContext>();
  load_poly_adapter(*model, fixture("hf/adapters/llama-poly"), ctx);
  ctx->set("task", f.task_ids());
  auto in = f.input();
  torch::NoGradGuard no_grad;
  model->eval();
  EXPECT_TRUE(torch::equal(model->forward(in).logits, model->forward(in).logits));
  model->train();
  EXPECT_FALSE(torch::allclose(model->forward(in).logits, model->forward(in).logits));
}

// routing_noise false (modula extension): training routes by σ(Z) as evaluation does, the
// key survives save/load, and a PEFT-default module writes no such key.
TEST(Poly, RoutingNoiseOffTrainsWithEvaluationRouting) {
  PolyFixture f;
  TempDir tmp;
  auto model = llama();
  auto ctx = std::make_shared<RoutingContext>();
  json config = {{"peft_type", "POLY"},   {"r", 2}, {"n_tasks", 4}, {"n_skills", 3}, {"target_modules", {"q_proj"}},
                 {"routing_noise", false}};
  auto poly = add_poly_adapter(*model, config, ctx, "quiet");
  for (auto& p : poly.parameters()) {
    torch::NoGradGuard g;
    p.normal_(0, 0.5);  // B != 0 and distinct logits, so routing changes the output
  }
  ctx->set("task", f.task_ids());
  auto in = f.input();
  torch::NoGradGuard no_grad;
  model->eval();
  auto eval_out = model->forward(in).logits;
  model->train();
  EXPECT_TRUE(torch::equal(model->forward(in).logits, eval_out));
  save_adapter(poly, tmp / "quiet");
  EXPECT_EQ(io::read_peft_folder(tmp / "quiet").config.at("routing_noise"), false);
  poly.remove();
  auto reloaded = load_poly_adapter(*model, tmp / "quiet", ctx, "again");
  model->train();
  EXPECT_TRUE(torch::equal(model->forward(in).logits, eval_out));
  reloaded.remove();
  config["routing_noise"] = true;
  auto noisy = add_poly_adapter(*model, config, ctx, "noisy");
  save_adapter(noisy, tmp / "noisy");
  EXPECT_FALSE(io::read_peft_folder(tmp / "noisy").config.contains("routing_noise"));
  noisy.remove();
  config["routing_noise"] = "no";
  try {
    add_poly_adapter(*model, config, ctx, "bad");
    FAIL() << "no exception";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("'routing_noise' must be true or false, got \"no\""), std::string::npos)
        << e.what();
  }
}

// lora_alpha (modula extension): the delta scales by α / r, survives save/load, and MHR-μ's
// LoRA keeps the scaling (its output equals uniform routing's).
TEST(Poly, LoraAlphaScalesTheDelta) {
  PolyFixture f;
  TempDir tmp;
  auto in = f.input();
  auto delta = [&](double alpha, bool reload) {
    auto model = llama();
    auto ctx = std::make_shared<RoutingContext>();
    torch::manual_seed(3);
    json config = {{"peft_type", "POLY"},  {"r", 2}, {"n_tasks", 4}, {"n_skills", 2}, {"target_modules", {"q_proj"}},
                   {"init_weights", false}};
    if (alpha != 1.0) config["lora_alpha"] = alpha;
    auto poly = add_poly_adapter(*model, config, ctx, "p");
    if (reload) {
      save_adapter(poly, tmp / "alpha");
      poly.remove();
      poly = load_poly_adapter(*model, tmp / "alpha", ctx, "p");
    }
    ctx->set("task", f.task_ids());
    model->eval();
    torch::NoGradGuard no_grad;
    auto with = model->forward(in).logits;
    poly.set_enabled(false);
    auto without = model->forward(in).logits;
    poly.set_enabled(true);
    auto mu = mhr_mu(*model, poly, "mu");
    poly.set_enabled(false);
    ctx->set("task", torch::zeros_like(f.task_ids()));  // routing rows ~uniform at init
    auto mu_out = model->forward(in).logits - without;
    mu.remove();
    poly.set_enabled(true);
    auto uniform_out = model->forward(in).logits - without;
    EXPECT_TRUE(torch::allclose(mu_out, uniform_out, 1e-3, 1e-4)) << "alpha " << alpha;
    return std::make_pair((with - without).abs().sum().item<double>(), uniform_out.abs().sum().item<double>());
  };
  auto one = delta(1.0, false);
  auto eight = delta(8.0, true);
  EXPECT_GT(one.first, 0);
  // q_proj's delta is 8x larger; the logits respond almost linearly to a small change.
  EXPECT_NEAR(eight.first / one.first, 8.0, 1.5);
  EXPECT_EQ(io::read_peft_folder(tmp / "alpha").config.at("lora_alpha"), 8.0);
  auto model = llama();
  auto ctx = std::make_shared<RoutingContext>();
  json bad = {{"peft_type", "POLY"}, {"r", 2}, {"n_tasks", 2}, {"target_modules", {"q_proj"}}, {"lora_alpha", -1}};
  try {
    add_poly_adapter(*model, bad, ctx, "bad");
    FAIL() << "no exception";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("'lora_alpha' must be a positive number"), std::string::npos) << e.what();
  }
}

TEST(Poly, SaveLoadRoundTripInPeftLayout) {
  PolyFixture f;
  TempDir tmp;
  auto model = llama();
  auto ctx = std::make_shared<RoutingContext>();
  auto poly = load_poly_adapter(*model, fixture("hf/adapters/llama-poly"), ctx);
  save_adapter(poly, tmp / "poly");
  auto reloaded = io::read_peft_folder(tmp / "poly");
  auto original = io::read_peft_folder(fixture("hf/adapters/llama-poly"));
  EXPECT_EQ(reloaded.peft_type, "POLY");
  ASSERT_EQ(reloaded.tensors.size(), original.tensors.size());
  for (const auto& [key, t] : original.tensors) {
    ASSERT_TRUE(reloaded.tensors.count(key)) << key;
    EXPECT_TRUE(torch::equal(reloaded.tensors.at(key), t)) << key;
  }
}

TEST(Poly, MhrMuEqualsUniformRoutingAndMhrZTrainsOnlyRouting) {
  PolyFixture f;
  auto model = llama();
  auto ctx = std::make_shared<RoutingContext>();
  auto poly = load_poly_adapter(*model, fixture("hf/adapters/llama-poly"), ctx);
  model->eval();
  ctx->set("task", f.task_ids());
  auto in = f.input();
  {
    torch::NoGradGuard no_grad;
    for (auto& m : poly.modules)
      std::dynamic_pointer_cast<PolyLoraImpl>(m.module)->poly_router->module_logits.fill_(0.3);
  }
  torch::Tensor uniform, mu;
  {
    torch::NoGradGuard no_grad;
    uniform = model->forward(in).logits;
    auto lora = mhr_mu(*model, poly);
    EXPECT_EQ(lora.peft_type, "LORA");
    poly.set_enabled(false);
    mu = model->forward(in).logits;
    EXPECT_TRUE(torch::allclose(masked(mu, in.attention_mask), masked(uniform, in.attention_mask), 1e-5, 1e-5));
    remove_adapter(lora);
    poly.set_enabled(true);
  }
  freeze_backbone(*model);
  auto trainable = mhr_z(poly);
  EXPECT_EQ(trainable.size(), poly.modules.size());
  model->train();
  model->forward(in).logits.pow(2).mean().backward();
  for (auto& m : poly.modules) {
    auto p = std::dynamic_pointer_cast<PolyLoraImpl>(m.module);
    EXPECT_FALSE(p->poly_lora_A.grad().defined()) << m.site;
    EXPECT_FALSE(p->poly_lora_B.grad().defined()) << m.site;
    ASSERT_TRUE(p->poly_router->module_logits.grad().defined()) << m.site;
    // Only the rows of the tasks in the batch get gradient.
    auto g = p->poly_router->module_logits.grad().abs().sum(1);
    auto ids = f.task_ids();
    for (int64_t t = 0; t < 4; ++t)
      EXPECT_EQ(g[t].item<double>() > 0, (ids == t).any().item<bool>()) << m.site << " task " << t;
  }
}

TEST(Poly, ErrorsAreClear) {
  auto model = llama();
  auto ctx = std::make_shared<RoutingContext>();
  json config = {{"peft_type", "POLY"}, {"r", 2},        {"n_tasks", 2},
                 {"n_skills", 2},       {"n_splits", 3}, {"target_modules", {"q_proj"}}};
  try {
    add_poly_adapter(*model, config, ctx);
    FAIL() << "no exception";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("n_splits 3 must divide in_features 64"), std::string::npos) << e.what();
  }
  config["n_splits"] = 2;
  config["poly_type"] = "mhr";
  EXPECT_THROW(add_poly_adapter(*model, config, ctx), std::invalid_argument);
  config["poly_type"] = "poly";
  auto poly = add_poly_adapter(*model, config, ctx);
  BackboneInput in;
  in.input_ids = torch::ones({2, 3}, torch::kInt64);
  EXPECT_THROW(model->forward(in), std::invalid_argument);  // no task ids
  ctx->set("task", torch::tensor({0, 2}));
  try {
    model->forward(in);
    FAIL() << "no exception";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("id 2 outside [-1, 2)"), std::string::npos) << e.what();
  }
  ctx->set("task", torch::tensor({0, 1}));
  EXPECT_NO_THROW(model->forward(in));
  EXPECT_THROW(load_poly_adapter(*model, fixture("hf/adapters/llama-mixed/a0"), ctx, "p2"), std::invalid_argument);
}
