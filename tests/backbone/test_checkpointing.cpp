// Activation checkpointing (Backbone::set_activation_checkpointing) leaves the gradients as
// they are: full fine-tuning of each family, every parameter's gradient equal with and
// without it; one recomputed node per layer, none with a KV cache. (Replaying dropout's
// random numbers is checked through LoRA dropout: test_registry_checkpointing.cpp.)
#include <gtest/gtest.h>

#include <set>

#include "modula/backbone/registry.h"
#include "support/temp_dir.h"

using modula::testing::fixture;

namespace {

std::vector<torch::Tensor> gradients(modula::Backbone& model, bool checkpoint) {
  model.set_activation_checkpointing(checkpoint);
  model.zero_grad();
  torch::manual_seed(11);
  modula::BackboneInput in;
  in.input_ids = torch::randint(0, std::min<int64_t>(model.config().vocab_size, 50), {2, 7});
  auto out = model.forward(in);
  (out.logits.defined() ? out.logits : out.last_hidden_state).square().mean().backward();
  std::vector<torch::Tensor> g;
  for (const auto& p : model.parameters()) g.push_back(p.grad().defined() ? p.grad().clone() : torch::Tensor());
  return g;
}

// The autograd nodes named `name` in the graph behind t.
int64_t count_nodes(const torch::Tensor& t, const std::string& name) {
  std::vector<torch::autograd::Node*> todo = {t.grad_fn().get()};
  std::set<torch::autograd::Node*> seen;
  int64_t n = 0;
  while (!todo.empty()) {
    auto* node = todo.back();
    todo.pop_back();
    if (!node || !seen.insert(node).second) continue;
    n += node->name().find(name) != std::string::npos;
    for (const auto& e : node->next_edges()) todo.push_back(e.function.get());
  }
  return n;
}

}  // namespace

TEST(ActivationCheckpointing, OneRecomputedNodePerLayer) {
  auto model = modula::load_backbone(fixture("hf/models/llama"));
  for (auto& p : model->parameters()) p.set_requires_grad(true);
  modula::BackboneInput in;
  in.input_ids = torch::tensor({{1, 2, 3}});
  model->set_activation_checkpointing(true);
  const auto layers = model->config().num_hidden_layers;
  EXPECT_EQ(count_nodes(model->forward(in).logits, "LayerCheckpoint"), layers);
  model->set_activation_checkpointing(false);
  EXPECT_EQ(count_nodes(model->forward(in).logits, "LayerCheckpoint"), 0);
  model->set_activation_checkpointing(true);
  modula::KVCache cache;  // decoding: nothing to recompute
  in.cache = &cache;
  EXPECT_EQ(count_nodes(model->forward(in).logits, "LayerCheckpoint"), 0);
}

TEST(ActivationCheckpointing, SameGradientsInEveryFamily) {
  for (std::string arch : {"llama", "gpt2", "bert"}) {
    auto model = modula::load_backbone(fixture("hf/models/" + arch));
    model->train();
    for (auto& p : model->parameters()) p.set_requires_grad(true);
    auto plain = gradients(*model, false), checkpointed = gradients(*model, true);
    ASSERT_EQ(plain.size(), checkpointed.size());
    int64_t compared = 0;
    for (size_t i = 0; i < plain.size(); ++i) {
      ASSERT_EQ(plain[i].defined(), checkpointed[i].defined()) << arch << " parameter " << i;
      if (!plain[i].defined()) continue;
      EXPECT_TRUE(torch::allclose(plain[i], checkpointed[i], 1e-5, 1e-7)) << arch << " parameter " << i;
      ++compared;
    }
    EXPECT_GT(compared, 10) << arch;
  }
}

TEST(ActivationCheckpointing, FrozenEmbeddingsStillTrainTheLayers) {
  // The first layer's input needs no gradient; its weights still get theirs.
  auto model = modula::load_backbone(fixture("hf/models/llama"));
  for (auto& p : model->parameters()) p.set_requires_grad(false);
  auto w = model->named_parameters()["model.layers.0.self_attn.q_proj.weight"];
  w.set_requires_grad(true);
  auto plain = gradients(*model, false);
  auto g0 = w.grad().clone();
  gradients(*model, true);
  ASSERT_TRUE(w.grad().defined());
  EXPECT_GT(g0.abs().sum().item<double>(), 0);
  EXPECT_TRUE(torch::allclose(w.grad(), g0, 1e-5, 1e-7));
}
