// BitFit: identity at init, trainable count = Σ bias numel, gradients only into biases,
// training lowers the loss, save/load round trip, and clear errors.
#include <gtest/gtest.h>

#include <fstream>

#include "modula/backbone/registry.h"
#include "modula/io/peft.h"
#include "modula/modules/bitfit.h"
#include "support/errors.h"
#include "support/temp_dir.h"

using modula::BitFit;
using modula::BitFitOptions;
using modula::testing::fixture;
using modula::testing::TempDir;

using modula::testing::error_of;
namespace {

std::shared_ptr<modula::Backbone> load(const std::string& name) {
  return modula::load_backbone(fixture("hf/models/" + name));
}

bool ends_with_bias(const std::string& s) { return s.size() >= 5 && s.compare(s.size() - 5, 5, ".bias") == 0; }

modula::BackboneInput batch() {
  modula::BackboneInput in;
  in.input_ids = torch::arange(10, 34, torch::kInt64).view({2, 12});
  return in;
}

torch::Tensor mlm_loss(modula::Backbone& model) {
  auto logits = model.forward(batch()).logits;
  auto labels = (batch().input_ids * 7 + 3) % logits.size(-1);
  return torch::nn::functional::cross_entropy(logits.reshape({-1, logits.size(-1)}), labels.reshape({-1}));
}

}  // namespace

TEST(BitFit, IdentityAtInit) {
  auto model = load("bert");
  torch::NoGradGuard g;
  auto before = model->forward(batch()).logits;
  BitFit bitfit(*model, BitFitOptions());
  EXPECT_TRUE(torch::equal(model->forward(batch()).logits, before));
}

TEST(BitFit, TrainableCountIsSumOfBiasNumels) {
  auto model = load("bert");
  int64_t all = 0, attention = 0;
  for (auto& p : model->named_parameters()) {
    if (!ends_with_bias(p.key())) continue;
    all += p.value().numel();
    if (p.key().find(".attention.") != std::string::npos) attention += p.value().numel();
  }
  BitFit bitfit(*model, BitFitOptions());
  EXPECT_EQ(bitfit->num_trainable(), all);
  int64_t trainable = 0;
  for (auto& p : model->parameters())
    if (p.requires_grad()) trainable += p.numel();
  EXPECT_EQ(trainable, all);
  BitFit some(*model, BitFitOptions().target_parameters({"re:.*\\.attention\\..*"}));
  EXPECT_EQ(some->num_trainable(), attention);
  EXPECT_LT(attention, all);
  // Qwen2 has biases on q/k/v only.
  auto qwen = load("qwen2");
  BitFit q(*qwen, BitFitOptions());
  for (const auto& name : q->names()) EXPECT_TRUE(name.find("_proj.bias") != std::string::npos) << name;
  EXPECT_EQ(q->names().size(), 3u * static_cast<size_t>(qwen->config().num_hidden_layers));
}

TEST(BitFit, GradientsOnlyIntoBiases) {
  auto model = load("bert");
  BitFit bitfit(*model, BitFitOptions());
  mlm_loss(*model).backward();
  for (auto& p : model->named_parameters()) {
    if (ends_with_bias(p.key()))
      EXPECT_TRUE(p.value().grad().defined()) << p.key();
    else
      EXPECT_FALSE(p.value().grad().defined()) << p.key();
  }
  for (auto& p : bitfit->named_parameters()) EXPECT_TRUE(p.value().grad().defined()) << p.key();
}

TEST(BitFit, TrainSaveLoadRoundTrip) {
  TempDir tmp;
  auto model = load("bert");
  BitFit bitfit(*model, BitFitOptions().base_model_name_or_path("bert"));
  torch::optim::AdamW opt(bitfit->parameters(), torch::optim::AdamWOptions(1e-2).weight_decay(0));
  const double before = mlm_loss(*model).item<double>();
  for (int s = 0; s < 5; ++s) {
    opt.zero_grad();
    mlm_loss(*model).backward();
    opt.step();
  }
  EXPECT_LT(mlm_loss(*model).item<double>(), before);
  bitfit->save(tmp / "bitfit");
  auto folder = modula::io::read_peft_folder(tmp / "bitfit");
  EXPECT_EQ(folder.config["peft_type"], "MODULA_BITFIT");
  EXPECT_EQ(folder.config["base_model_name_or_path"], "bert");
  EXPECT_EQ(folder.tensors.size(), bitfit->names().size());
  EXPECT_TRUE(folder.tensors.count("bert.encoder.layer.0.attention.self.query.bias"));

  auto fresh = load("bert");
  auto loaded = modula::load_bitfit(*fresh, tmp / "bitfit");
  EXPECT_EQ(loaded->names(), bitfit->names());
  EXPECT_EQ(loaded->num_trainable(), bitfit->num_trainable());
  torch::NoGradGuard g;
  EXPECT_TRUE(torch::equal(model->forward(batch()).logits, fresh->forward(batch()).logits));
}

TEST(BitFit, Errors) {
  TempDir tmp;
  auto llama = load("llama");
  auto none = error_of<std::invalid_argument>([&] { BitFit b(*llama, BitFitOptions()); });
  EXPECT_NE(none.find("[bitfit] the llama model has no bias parameters"), std::string::npos) << none;
  auto bert = load("bert");
  auto weight =
      error_of<std::invalid_argument>([&] { BitFit b(*bert, BitFitOptions().target_parameters({"query.weight"})); });
  EXPECT_NE(weight.find("'query.weight' matches no bias"), std::string::npos) << weight;
  auto unknown =
      error_of<std::invalid_argument>([&] { BitFit b(*bert, BitFitOptions().target_parameters({"nope.bias"})); });
  EXPECT_NE(unknown.find("'nope.bias' matches no parameter"), std::string::npos) << unknown;

  BitFit bitfit(*bert, BitFitOptions().target_parameters({"query.bias"}));
  const std::string dir = tmp / "b", file = tmp / "b/adapter_model.safetensors";
  bitfit->save(dir);
  auto qwen = load("qwen2");  // different names
  auto other = error_of<std::runtime_error>([&] { modula::load_bitfit(*qwen, dir); });
  EXPECT_NE(other.find(file), std::string::npos) << other;
  EXPECT_NE(other.find("bert.encoder.layer.0.attention.self.query.bias"), std::string::npos) << other;
  modula::io::save_safetensors(file, {{"bert.encoder.layer.0.attention.self.query.bias", torch::zeros({3})},
                                      {"bert.encoder.layer.1.attention.self.query.bias", torch::zeros({64})}});
  auto shape = error_of<std::runtime_error>([&] { modula::load_bitfit(*bert, dir); });
  EXPECT_NE(shape.find("shape mismatch for key 'bert.encoder.layer.0.attention.self.query.bias'"), std::string::npos)
      << shape;
  std::ofstream(tmp / "b/adapter_config.json") << R"({"peft_type": "LORA"})";
  auto type = error_of<std::runtime_error>([&] { modula::load_bitfit(*bert, dir); });
  EXPECT_NE(type.find("is not MODULA_BITFIT"), std::string::npos) << type;
}
