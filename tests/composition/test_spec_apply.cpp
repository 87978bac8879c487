// A composition spec applied to a model equals the same composition built by hand:
// stack = native sequential attachment, parallel/avg = the sum / weighted sum, route = the
// adapter of each row, avg over LoRA = scaled LoRA, concat = one prompt; folders (incl. a
// MODULA_FUSION folder) load by name; misplaced modules are rejected by name.
#include <gtest/gtest.h>

#include "modula/aggregation/fusion.h"
#include "modula/backbone/registry.h"
#include "modula/composition/apply_spec.h"
#include "modula/composition/modular_linear.h"
#include "modula/composition/registry.h"
#include "modula/modules/ia3.h"
#include "modula/modules/lora.h"
#include "modula/modules/targets.h"
#include "support/temp_dir.h"

using modula::testing::fixture;
using modula::testing::TempDir;
using json = nlohmann::json;

namespace {

std::shared_ptr<modula::Backbone> load() { return modula::load_backbone(fixture("hf/models/llama")); }

modula::BackboneInput batch() {
  modula::BackboneInput in;
  in.input_ids = torch::arange(10, 34, torch::kInt64).view({2, 12});
  in.attention_mask = torch::ones({2, 12}, torch::kInt64);
  return in;
}

double max_diff(const torch::Tensor& a, const torch::Tensor& b) { return (a - b).abs().max().item<double>(); }

modula::Adapter perturbed(modula::Backbone& model, const json& config, const std::string& name) {
  auto a = modula::add_adapter(model, config, name);
  torch::NoGradGuard g;
  for (auto& p : a.parameters()) p.add_(torch::randn_like(p) * 0.3);
  return a;
}

const json kPfeiffer = {{"peft_type", "MODULA_BOTTLENECK"}, {"config", "pfeiffer"}, {"reduction_factor", 4}};
const json kHoulsby = {{"peft_type", "MODULA_BOTTLENECK"}, {"config", "houlsby"}, {"reduction_factor", 4}};
const json kLora = {{"peft_type", "LORA"}, {"r", 2}, {"target_modules", {"q_proj", "v_proj"}}};

struct Spec : ::testing::Test {
  void SetUp() override {
    torch::manual_seed(0);
    model = load();
    a = perturbed(*model, kPfeiffer, "a");
    b = perturbed(*model, kHoulsby, "b");  // also adapts the attention blocks
    members = {{"a", &a}, {"b", &b}};
  }
  // Logits with only the named adapters switched on (natively, in attachment order).
  torch::Tensor only(std::initializer_list<modula::Adapter*> on) {
    torch::NoGradGuard g;
    for (auto& [name, ad] : members) const_cast<modula::Adapter*>(ad)->set_enabled(false);
    for (auto* ad : on) ad->set_enabled(true);
    auto out = model->forward(batch()).logits;
    for (auto& [name, ad] : members) const_cast<modula::Adapter*>(ad)->set_enabled(true);
    return out;
  }
  torch::Tensor composed(const std::string& spec) {
    torch::NoGradGuard g;
    auto comp = modula::apply_spec(*model, modula::parse_spec(spec), members);
    auto out = comp.forward(*model, batch()).logits;
    modula::remove_composition(comp);
    return out;
  }
  std::shared_ptr<modula::Backbone> model;
  modula::Adapter a, b;
  std::map<std::string, const modula::Adapter*> members;
};

TEST_F(Spec, StackEqualsNativeSequentialAttachment) {
  auto native = only({&a, &b});
  EXPECT_LE(max_diff(composed("stack(a, b)"), native), 1e-5);
  EXPECT_GT(max_diff(composed("stack(b, a)"), native), 1e-4);  // order matters
  // remove_composition put everything back: a and b run natively again.
  EXPECT_LE(max_diff(only({&a, &b}), native), 1e-6);
}

TEST_F(Spec, ParallelAndAverageEqualTheirHandBuiltSums) {
  torch::NoGradGuard g;
  // Per block site: parallel = y + d_a + d_b, avg = y + 0.7 d_a + 0.3 d_b; members absent at a
  // site (a at the attention blocks) contribute nothing there.
  auto par = modula::apply_spec(*model, modula::parse_spec("parallel(a, b)"), members);
  int attention_sites = 0;
  for (auto& [path, site] : par.sites) {
    auto root = std::dynamic_pointer_cast<modula::CompositeImpl>(site->module("compose"));
    ASSERT_TRUE(root) << path;
    if (path.find("self_attn") != std::string::npos) ++attention_sites;
  }
  EXPECT_EQ(par.sites.size(), static_cast<size_t>(model->config().num_hidden_layers));  // mlp sites only
  EXPECT_EQ(attention_sites, 0);                                                        // b alone there: runs natively
  auto x = torch::randn({1, 2, model->config().hidden_size}), y = torch::randn({1, 2, model->config().hidden_size});
  auto site = par.sites.front().second;
  auto ma = a.modules.front().module, mb = site->module("b");
  auto da = ma->transform_block(x, y) - y, db = mb->transform_block(x, y) - y;
  EXPECT_LE(max_diff(site->module("compose")->transform_block(x, y), y + da + db), 1e-5);
  auto logits = par.forward(*model, batch()).logits;
  modula::remove_composition(par);
  EXPECT_GT(max_diff(logits, only({&a, &b})), 1e-4);  // a sum, not a stack

  auto avg = modula::apply_spec(*model, modula::parse_spec("avg(a:0.7, b:0.3)"), members);
  ASSERT_EQ(avg.sites.size(), 2u * model->config().num_hidden_layers);  // b alone at attention: 0.3 of it
  for (auto& [path, s] : avg.sites) {
    auto d_b = s->module("b")->transform_block(x, y) - y;
    if (path.find("self_attn") != std::string::npos)
      EXPECT_LE(max_diff(s->module("compose")->transform_block(x, y), y + 0.3 * d_b), 1e-5) << path;
    else if (s == site)
      EXPECT_LE(max_diff(s->module("compose")->transform_block(x, y), y + 0.7 * da + 0.3 * db), 1e-5) << path;
  }
  modula::remove_composition(avg);
}

TEST_F(Spec, RouteGivesEachRowItsAdapter) {
  auto only_a = only({&a}), only_b = only({&b});
  torch::NoGradGuard g;
  auto comp = modula::apply_spec(*model, modula::parse_spec("route(task, a, b)"), members);
  comp.context->set("task", torch::tensor({1, 0}, torch::kInt64));
  auto out = comp.forward(*model, batch()).logits;
  EXPECT_LE(max_diff(out[0], only_b[0]), 1e-5);
  EXPECT_LE(max_diff(out[1], only_a[1]), 1e-5);
  comp.context->set("task", torch::tensor({0, 7}, torch::kInt64));
  EXPECT_THROW(comp.forward(*model, batch()), std::invalid_argument);  // id outside [-1, 2)
}

TEST_F(Spec, RouteOverLoraAdaptersGivesEachRowItsAdapterAndTrainsTheMembers) {
  auto l1 = perturbed(*model, kLora, "l1");
  auto l2 = perturbed(*model, {{"peft_type", "LORA"}, {"r", 4}, {"target_modules", {"v_proj", "down_proj"}}}, "l2");
  a.set_enabled(false), b.set_enabled(false);
  members = {{"l1", &l1}, {"l2", &l2}, {"a", &a}};
  auto alone = [&](modula::Adapter* on) {
    torch::NoGradGuard g;
    l1.set_enabled(on == &l1), l2.set_enabled(on == &l2), a.set_enabled(on == &a);
    auto out = model->forward(batch()).logits;
    l1.set_enabled(true), l2.set_enabled(true), a.set_enabled(false);
    return out;
  };
  auto with_l1 = alone(&l1), with_l2 = alone(&l2), with_a = alone(&a);
  auto comp = modula::apply_spec(*model, modula::parse_spec("route(task, l1, l2, a)"), members);
  EXPECT_EQ(comp.linear_sites.size(), 3u * model->config().num_hidden_layers);  // q, v, down
  comp.context->set("task", torch::tensor({1, 0}, torch::kInt64));
  {
    torch::NoGradGuard g;
    auto out = comp.forward(*model, batch()).logits;
    EXPECT_LE(max_diff(out[0], with_l2[0]), 1e-5);
    EXPECT_LE(max_diff(out[1], with_l1[1]), 1e-5);
    comp.context->set("task", torch::tensor({2, -1}, torch::kInt64));  // a bottleneck row and a base row
    out = comp.forward(*model, batch()).logits;
    EXPECT_LE(max_diff(out[0], with_a[0]), 1e-5);
    EXPECT_GT(max_diff(out[0], with_l1[0]), 1e-4);
  }
  // The bank is a view: gradients reach the members' own parameters, only the routed ones.
  comp.context->set("task", torch::tensor({1, 1}, torch::kInt64));
  comp.forward(*model, batch()).logits.pow(2).mean().backward();
  double g1 = 0, g2 = 0;
  for (auto& p : l1.parameters()) g1 += p.grad().defined() ? p.grad().abs().sum().item<double>() : 0.0;
  for (auto& p : l2.parameters()) g2 += p.grad().defined() ? p.grad().abs().sum().item<double>() : 0.0;
  EXPECT_EQ(g1, 0);
  EXPECT_GT(g2, 0);
  modula::remove_composition(comp);  // the members run natively again
  torch::NoGradGuard g;
  l2.set_enabled(false), a.set_enabled(false);
  EXPECT_LE(max_diff(model->forward(batch()).logits, with_l1), 1e-6);
  auto dora =
      perturbed(*model, {{"peft_type", "LORA"}, {"r", 2}, {"use_dora", true}, {"target_modules", {"q_proj"}}}, "d");
  members["d"] = &dora;
  EXPECT_THROW(modula::apply_spec(*model, modula::parse_spec("route(task, l1, d)"), members), std::invalid_argument);
}

// route(softmax|softmax_token|top1|smear, ...): a learned router per site; the site output
// is Algorithm 1 by hand from the router's weights, and training reaches routers and members.
TEST_F(Spec, LearnedRoutesOverLoraAndBlockModules) {
  auto l1 = perturbed(*model, kLora, "l1");
  auto l2 = perturbed(*model, kLora, "l2");
  members = {{"l1", &l1}, {"l2", &l2}, {"a", &a}, {"b", &b}};
  a.set_enabled(false), b.set_enabled(false);
  auto lora_at = [](const modula::Adapter& ad, const std::string& site) {
    for (const auto& m : ad.modules)
      if (m.site == site) return std::dynamic_pointer_cast<modula::LoraImpl>(m.module);
    return std::shared_ptr<modula::LoraImpl>();
  };
  for (std::string key : {"softmax", "softmax_token", "top1", "smear"}) {
    auto comp = modula::apply_spec(*model, modula::parse_spec("route(" + key + ", l1, l2)"), members);
    ASSERT_EQ(comp.routers.size(), comp.linear_sites.size()) << key;  // one learned router per site
    auto& [path, layer] = comp.linear_sites.front();
    auto routed = std::dynamic_pointer_cast<modula::ModularLinearImpl>(layer->module("compose"));
    ASSERT_TRUE(routed) << key;
    auto x = torch::randn({2, 5, layer->options.in_features()});
    torch::NoGradGuard g;
    auto y = layer->forward(x);
    auto w = routed->last_routing.weights;  // [2, 2] per example or [2, 5, 2] per token
    auto w3 = w.dim() == 2 ? w.unsqueeze(1) : w;
    auto p1 = lora_at(l1, path), p2 = lora_at(l2, path);
    torch::Tensor want;
    if (key == "smear") {  // f(x; Σ w φ): (Σ w A) then (Σ w s B), per example
      auto A = w.select(1, 0).view({2, 1, 1}) * p1->lora_A + w.select(1, 1).view({2, 1, 1}) * p2->lora_A;
      auto B = w.select(1, 0).view({2, 1, 1}) * p1->options.scaling() * p1->lora_B +
               w.select(1, 1).view({2, 1, 1}) * p2->options.scaling() * p2->lora_B;
      want = layer->base_forward(x) + torch::bmm(torch::bmm(x, A.transpose(1, 2)), B.transpose(1, 2));
    } else {
      auto f = [&](const std::shared_ptr<modula::LoraImpl>& l) {
        return l->options.scaling() * torch::matmul(torch::matmul(x, l->lora_A.t()), l->lora_B.t());
      };
      want = layer->base_forward(x) + w3.select(2, 0).unsqueeze(-1) * f(p1) + w3.select(2, 1).unsqueeze(-1) * f(p2);
      if (key == "top1") EXPECT_TRUE(torch::equal((w > 0).sum(-1), torch::ones({2, 5}, torch::kLong))) << key;
    }
    EXPECT_LE(max_diff(y, want), 1e-5) << key;
    modula::remove_composition(comp);
  }
  // Training: the learned routers and the members both get gradients; top-k adds its losses.
  auto comp = modula::apply_spec(*model, modula::parse_spec("route(top1, l1, l2)"), members);
  model->train();
  auto aux_free = comp.forward(*model, batch()).logits.pow(2).mean();
  auto aux = modula::collect_aux_loss(*model);
  EXPECT_GT(aux.item<double>(), 0);
  (aux_free + aux).backward();
  double router_grad = 0, member_grad = 0;
  for (auto& r : comp.routers)
    for (auto& p : r->parameters()) router_grad += p.grad().defined() ? p.grad().abs().sum().item<double>() : 0.0;
  for (auto* ad : {&l1, &l2})
    for (auto& p : ad->parameters()) member_grad += p.grad().defined() ? p.grad().abs().sum().item<double>() : 0.0;
  EXPECT_GT(router_grad, 0);
  EXPECT_GT(member_grad, 0);
  modula::remove_composition(comp);
  model->eval();
  // Block-site members: a learned router per block site; smear is LoRA-only.
  members = {{"a", &a}, {"b", &b}};
  auto blocks = modula::apply_spec(*model, modula::parse_spec("route(softmax, a, b)"), members);
  EXPECT_EQ(blocks.routers.size(), blocks.sites.size());
  EXPECT_GT(blocks.sites.size(), 0u);
  modula::remove_composition(blocks);
  EXPECT_THROW(modula::apply_spec(*model, modula::parse_spec("route(smear, a, b)"), members), std::invalid_argument);
  EXPECT_THROW(modula::apply_spec(*model, modula::parse_spec("route(top3, a, b)"), members), std::invalid_argument);
}

// (IA)³ under route(...): a view bank over the attached members (Ia3BankImpl::view), fixed
// and learned. Each site's output is Algorithm 1 by hand, y + Σ_m w_m d_m with
// d_m = y ⊙ (l_m − 1) (attention/output) or W (x ⊙ (l_m − 1)) (feed-forward), and
// gradients reach the members' vectors.
TEST_F(Spec, RouteOverIa3AdaptersIsAlgorithm1AndTrainsTheMembers) {
  const json kIa3 = {
      {"peft_type", "IA3"}, {"target_modules", {"v_proj", "down_proj"}}, {"feedforward_modules", {"down_proj"}}};
  auto i1 = perturbed(*model, kIa3, "i1");
  auto i2 = perturbed(*model, kIa3, "i2");
  a.set_enabled(false), b.set_enabled(false);
  members = {{"i1", &i1}, {"i2", &i2}};
  auto alone = [&](modula::Adapter* on) {
    torch::NoGradGuard g;
    i1.set_enabled(on == &i1), i2.set_enabled(on == &i2);
    auto out = model->forward(batch()).logits;
    i1.set_enabled(true), i2.set_enabled(true);
    return out;
  };
  auto with_i1 = alone(&i1), with_i2 = alone(&i2);
  torch::Tensor both;  // both on, natively
  {
    torch::NoGradGuard g;
    both = model->forward(batch()).logits;
  }
  {  // fixed: each row its module
    auto comp = modula::apply_spec(*model, modula::parse_spec("route(task, i1, i2)"), members);
    EXPECT_EQ(comp.linear_sites.size(), 2u * model->config().num_hidden_layers);  // v, down
    comp.context->set("task", torch::tensor({1, 0}, torch::kInt64));
    torch::NoGradGuard g;
    auto out = comp.forward(*model, batch()).logits;
    EXPECT_LE(max_diff(out[0], with_i2[0]), 1e-5);
    EXPECT_LE(max_diff(out[1], with_i1[1]), 1e-5);
    modula::remove_composition(comp);
  }
  auto l_at = [](const modula::Adapter& ad, const std::string& site) {
    for (const auto& m : ad.modules)
      if (m.site == site) return std::dynamic_pointer_cast<modula::Ia3Impl>(m.module)->ia3_l.flatten();
    return torch::Tensor();
  };
  for (std::string key : {"softmax", "softmax_token", "top1", "smear"}) {
    auto comp = modula::apply_spec(*model, modula::parse_spec("route(" + key + ", i1, i2)"), members);
    ASSERT_EQ(comp.routers.size(), comp.linear_sites.size()) << key;
    for (auto& [path, layer] : comp.linear_sites) {
      auto routed = std::dynamic_pointer_cast<modula::ModularLinearImpl>(layer->module("compose"));
      ASSERT_TRUE(routed) << key;
      auto x = torch::randn({2, 5, layer->options.in_features()});
      torch::NoGradGuard g;
      auto y = layer->forward(x);
      auto w = routed->last_routing.weights;
      auto w3 = w.dim() == 2 ? w.unsqueeze(1) : w;  // [2, 1|5, 2]
      auto v =
          w3.select(2, 0).unsqueeze(-1) * (l_at(i1, path) - 1) + w3.select(2, 1).unsqueeze(-1) * (l_at(i2, path) - 1);
      auto base = layer->base_forward(x);
      const bool ff = path.find("down_proj") != std::string::npos;
      auto want = ff ? base + torch::matmul(x * v, layer->weight_out_in().t()) : base + base * v;
      EXPECT_LE(max_diff(y, want), 1e-5) << key << " " << path;
    }
    modula::remove_composition(comp);
  }
  // Training: the learned routers and both members get gradients; a fixed route only the routed member.
  auto grad_of = [](const modula::Adapter& ad) {
    double g = 0;
    for (auto& p : ad.parameters()) g += p.grad().defined() ? p.grad().abs().sum().item<double>() : 0.0;
    return g;
  };
  auto comp = modula::apply_spec(*model, modula::parse_spec("route(softmax, i1, i2)"), members);
  comp.forward(*model, batch()).logits.pow(2).mean().backward();
  double router_grad = 0;
  for (auto& r : comp.routers)
    for (auto& p : r->parameters()) router_grad += p.grad().defined() ? p.grad().abs().sum().item<double>() : 0.0;
  EXPECT_GT(router_grad, 0);
  EXPECT_GT(grad_of(i1), 0);
  EXPECT_GT(grad_of(i2), 0);
  modula::remove_composition(comp);
  for (auto* ad : {&i1, &i2})
    for (auto& p : ad->parameters()) p.mutable_grad() = torch::Tensor();
  auto fixed = modula::apply_spec(*model, modula::parse_spec("route(task, i1, i2)"), members);
  fixed.context->set("task", torch::tensor({1, 1}, torch::kInt64));
  fixed.forward(*model, batch()).logits.pow(2).mean().backward();
  EXPECT_EQ(grad_of(i1), 0);
  EXPECT_GT(grad_of(i2), 0);
  modula::remove_composition(fixed);  // the members run natively again
  {
    torch::NoGradGuard g;
    EXPECT_LE(max_diff(model->forward(batch()).logits, both), 1e-6);
  }
  // One kind per routed site: LoRA and (IA)³ at v_proj.
  auto l1 = perturbed(*model, kLora, "l1");
  members["l1"] = &l1;
  try {
    modula::apply_spec(*model, modula::parse_spec("route(task, l1, i1)"), members);
    FAIL() << "LoRA and (IA)³ at one routed site must throw";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("mixes LoRA and (IA)³ modules at"), std::string::npos) << e.what();
  }
}

TEST_F(Spec, FuseTrainsOnlyTheFusionAndStacksAfterALanguageAdapter) {
  auto c = perturbed(*model, kPfeiffer, "c");
  members["c"] = &c;
  modula::freeze_backbone(*model);
  auto comp = modula::apply_spec(*model, modula::parse_spec("stack(a, fuse(b, c))"), members);
  ASSERT_EQ(comp.fusions.size(), 1u);
  EXPECT_EQ(comp.fusions[0].adapters, (std::vector<std::string>{"b", "c"}));
  auto params = comp.parameters();
  EXPECT_FALSE(params.empty());
  for (auto* ad : {&b, &c})
    for (auto& p : ad->parameters()) EXPECT_FALSE(p.requires_grad());
  for (auto& p : a.parameters()) EXPECT_TRUE(p.requires_grad());  // not fused: left trainable
  auto logits = comp.forward(*model, batch()).logits;
  logits.pow(2).mean().backward();
  for (auto& p : params) EXPECT_TRUE(p.grad().defined());
  for (auto& p : b.parameters()) EXPECT_FALSE(p.grad().defined());
}

TEST_F(Spec, LinearAdaptersAreScaledByAvgAndRejectedUnderFuse) {
  auto l1 = perturbed(*model, kLora, "l1");
  auto l2 = perturbed(*model, kLora, "l2");
  members = {{"l1", &l1}, {"l2", &l2}, {"a", &a}};
  a.set_enabled(false);
  torch::NoGradGuard g;
  auto at_scale_one = model->forward(batch()).logits;
  l1.set_scale(0.25);
  l2.set_scale(0.75);
  auto expected = model->forward(batch()).logits;
  l1.set_scale(1);
  l2.set_scale(1);
  auto comp = modula::apply_spec(*model, modula::parse_spec("avg(l1:1, l2:3)"), members);
  EXPECT_LE(max_diff(comp.forward(*model, batch()).logits, expected), 1e-5);
  modula::remove_composition(comp);  // scales back to 1
  EXPECT_LE(max_diff(model->forward(batch()).logits, at_scale_one), 1e-6);
  try {
    modula::apply_spec(*model, modula::parse_spec("fuse(a, l1)"), members);
    FAIL() << "LoRA under fuse must throw";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("column 9: linear-site adapter 'l1' (LORA) cannot be under fuse"),
              std::string::npos)
        << e.what();
  }
}

TEST_F(Spec, ConcatenatedPromptsAndMisplacedPrompts) {
  json c = {{"peft_type", "PROMPT_TUNING"}, {"num_virtual_tokens", 2}};
  auto p1 = modula::add_adapter(*model, c, "p1");
  auto p2 = modula::add_adapter(*model, c, "p2");
  members["p1"] = &p1;
  members["p2"] = &p2;
  torch::NoGradGuard g;
  auto single =
      std::make_shared<modula::PromptTuningImpl>(modula::PromptTuningOptions(4, model->config().hidden_size), *model);
  single->embedding.copy_(torch::cat({p1.input->prompt_embeddings(), p2.input->prompt_embeddings()}, 0));
  auto expected = modula::forward_with(*model, {single}, batch()).logits;  // a and b native
  auto comp = modula::apply_spec(*model, modula::parse_spec("stack(concat(p1, p2), a, b)"), members);
  EXPECT_LE(max_diff(comp.forward(*model, batch()).logits, expected), 1e-5);
  modula::remove_composition(comp);
  try {
    modula::apply_spec(*model, modula::parse_spec("stack(a, parallel(p1, b))"), members);
    FAIL() << "a prompt inside parallel must throw";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("prompt 'p1' (PROMPT_TUNING) can only be stacked at the top level"),
              std::string::npos)
        << e.what();
  }
  EXPECT_THROW(modula::apply_spec(*model, modula::parse_spec("concat(p1, a)"), members), std::invalid_argument);
  EXPECT_THROW(modula::apply_spec(*model, modula::parse_spec("stack(a, zz)"), members), modula::SpecError);
}

// What would run untrained is named, once per spec node: a new fuse(…), a learned route's
// routers; stack, avg and routing by metadata train nothing.
TEST_F(Spec, FreshFusionsAndLearnedRoutersAreNamedAsUntrained) {
  auto untrained = [&](const std::string& spec) {
    auto comp = modula::apply_spec(*model, modula::parse_spec(spec), members);
    auto out = comp.untrained;
    modula::remove_composition(comp);
    EXPECT_TRUE(comp.untrained.empty());
    return out;
  };
  EXPECT_TRUE(untrained("stack(a, b)").empty());
  EXPECT_TRUE(untrained("avg(a:0.3, b:0.7)").empty());
  EXPECT_TRUE(untrained("route(task, a, b)").empty());
  auto fused = untrained("fuse(a, b)");
  ASSERT_EQ(fused.size(), 1u);
  EXPECT_EQ(fused[0].rfind("fuse(a, b): new fusion weights", 0), 0u) << fused[0];
  auto routed = untrained("route(softmax, a, b)");  // one router per site, named once
  ASSERT_EQ(routed.size(), 1u);
  EXPECT_EQ(routed[0].rfind("route(softmax, a, b): new softmax router", 0), 0u) << routed[0];
  auto lora = perturbed(*model, kLora, "l1");
  auto lora2 = perturbed(*model, kLora, "l2");
  members["l1"] = &lora, members["l2"] = &lora2;
  auto moe = untrained("moe(l1, l2)");
  ASSERT_EQ(moe.size(), 1u);
  EXPECT_EQ(moe[0].rfind("route(top2, l1, l2): new top2 router", 0), 0u) << moe[0];
}

TEST(SpecFolders, LoadsAdaptersAndAFusionFolderByName) {
  torch::manual_seed(0);
  TempDir dir;
  torch::Tensor expected;
  {
    auto model = load();
    auto de = perturbed(*model, kPfeiffer, "de");
    auto ta = perturbed(*model, kPfeiffer, "task_a");
    auto tb = perturbed(*model, kPfeiffer, "task_b");
    modula::save_adapter(de, dir / "de");
    modula::save_adapter(ta, dir / "a");
    modula::save_adapter(tb, dir / "b");
    std::map<std::string, const modula::Adapter*> members = {{"de", &de}, {"task_a", &ta}, {"task_b", &tb}};
    auto comp = modula::apply_spec(*model, modula::parse_spec("stack(de, fuse(task_a, task_b))"), members);
    {
      torch::NoGradGuard g;
      for (auto& p : comp.parameters()) p.add_(torch::randn_like(p) * 0.1);
      expected = comp.forward(*model, batch()).logits;
    }
    modula::save_fusion(comp.fusions[0], dir / "ab");
  }
  auto model = load();
  std::map<std::string, std::string> folders = {
      {"de", dir / "de"}, {"task_a", dir / "a"}, {"task_b", dir / "b"}, {"ab", dir / "ab"}};
  torch::NoGradGuard g;
  auto comp = modula::apply_spec(*model, modula::parse_spec("stack(de, ab)"), folders);  // ab = fuse(task_a, task_b)
  EXPECT_EQ(modula::to_string(comp.spec), "stack(de, fuse(task_a, task_b))");
  EXPECT_EQ(comp.owned.size(), 3u);
  EXPECT_TRUE(comp.untrained.empty()) << comp.untrained.front();  // the fusion's weights came from its folder
  EXPECT_LE(max_diff(comp.forward(*model, batch()).logits, expected), 1e-5);
  modula::remove_composition(comp);
  EXPECT_TRUE(modula::block_sites(*model).front().second->module_names().empty());  // owned adapters removed

  folders.erase("task_b");
  try {
    modula::apply_spec(*model, modula::parse_spec("stack(de, ab)"), folders);
    FAIL() << "a fusion member without a folder must throw";
  } catch (const modula::SpecError& e) {
    EXPECT_NE(std::string(e.what()).find("unknown module name 'task_b'"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("member of fusion 'ab'"), std::string::npos) << e.what();
  }
}

}  // namespace
