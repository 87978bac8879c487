// Sparse fine-tuning: identity at init, K trainable values, gradients only into φ (and
// equal to the dense gradient at the mask), save/load, apply/remove, composition,
// and clear errors for bad inputs (LT-SFT: tests/train/test_lt_sft.cpp).
#include <gtest/gtest.h>

#include <fstream>

#include "modula/backbone/registry.h"
#include "modula/io/peft.h"
#include "modula/modules/sparse_ft.h"
#include "support/errors.h"
#include "support/sparse.h"
#include "support/temp_dir.h"

using modula::SparseDiff;
using modula::SparseDiffOptions;
using modula::testing::fixture;
using modula::testing::TempDir;

using modula::testing::error_of;
using namespace modula::testing;  // llama, proj_options, batch, lm_loss, snapshot, max_diff

namespace {

// A diff with a random mask and random values.
SparseDiff random_diff(modula::Backbone& model, uint64_t seed, SparseDiffOptions o = proj_options()) {
  auto diff = modula::random_sparse_diff(model, o, seed);
  torch::NoGradGuard g;
  torch::manual_seed(seed);
  for (auto& v : diff->parameters()) v.normal_(0.0, 0.05);
  return diff;
}

}  // namespace

TEST(SparseFt, IdentityAtInit) {
  auto model = llama();
  torch::NoGradGuard g;
  auto before = model->forward(batch()).logits;
  auto diff = modula::random_sparse_diff(*model, proj_options(), 1);
  diff->attach(*model);
  EXPECT_TRUE(torch::equal(diff->forward(*model, batch()).logits, before));
  diff->detach();
  diff->apply(*model);
  EXPECT_TRUE(torch::equal(model->forward(batch()).logits, before));
}

TEST(SparseFt, TrainableCountIsK) {
  auto model = llama();
  int64_t total = 0;
  for (auto& [name, p] : modula::select_parameters(*model, {kProj})) total += p.numel();
  const int64_t K = std::llround(0.05 * static_cast<double>(total));
  auto diff = modula::random_sparse_diff(*model, proj_options(0.05), 3);
  EXPECT_EQ(diff->num_trainable(), K);
  EXPECT_EQ(diff->num_chosen(), total);
  int64_t n = 0;
  for (auto& p : diff->parameters()) n += p.numel();
  EXPECT_EQ(n, K);
  auto exact = modula::random_sparse_diff(*model, proj_options().k(123), 3);
  EXPECT_EQ(exact->num_trainable(), 123);
  // Parameter names of the module are the file keys.
  auto first = diff->names().front();
  EXPECT_TRUE(diff->named_parameters().contains(first + ".sft_values"));
  EXPECT_TRUE(diff->named_buffers().contains(first + ".sft_indices"));
}

TEST(SparseFt, GradientsOnlyIntoValuesAndExact) {
  auto model = llama();
  auto base = snapshot(*model);
  for (auto& p : model->parameters()) p.set_requires_grad(false);
  auto diff = random_diff(*model, 5);
  diff->attach(*model);
  auto ids = batch().input_ids;
  diff->refresh();
  lm_loss(*model, ids).backward();
  diff->detach();
  for (auto& p : model->named_parameters()) {
    EXPECT_TRUE(p.value().is_leaf()) << p.key();
    EXPECT_FALSE(p.value().grad().defined()) << p.key();
  }
  EXPECT_EQ(max_diff(*model, base), 0.0);  // detach restores θ₀ exactly

  // Reference: dense gradient of θ₀ + φ, read at the mask.
  auto ref = llama();
  diff->apply(*ref);
  auto params = ref->named_parameters();
  for (auto& p : ref->parameters()) p.set_requires_grad(false);
  for (const auto& name : diff->names()) params[name].set_requires_grad(true);
  lm_loss(*ref, ids).backward();
  for (const auto& name : diff->names()) {
    auto g = diff->values(name).grad();
    ASSERT_TRUE(g.defined()) << name;
    auto expected = params[name].grad().reshape(-1).take(diff->indices(name));
    EXPECT_TRUE(torch::allclose(g, expected, 1e-5, 1e-7)) << name;
  }
  EXPECT_GT(diff->values(diff->names().front()).grad().abs().sum().item<double>(), 0.0);
}

TEST(SparseFt, AttachedForwardEqualsApplied) {
  auto model = llama();
  auto diff = random_diff(*model, 7);
  torch::NoGradGuard g;
  diff->attach(*model);
  auto attached = diff->forward(*model, batch()).logits;
  diff->detach();
  diff->apply(*model);
  EXPECT_TRUE(torch::allclose(attached, model->forward(batch()).logits, 1e-6, 1e-6));
}

TEST(SparseFt, SaveLoadRoundTrip) {
  TempDir tmp;
  auto model = llama();
  auto diff = random_diff(*model, 11);
  modula::save_sparse_diff(diff, tmp / "sft");
  auto folder = modula::io::read_peft_folder(tmp / "sft");
  EXPECT_EQ(folder.config["peft_type"], "MODULA_SPARSE_FT");
  EXPECT_EQ(folder.config["density"], 0.05);
  EXPECT_EQ(folder.config["base_model_name_or_path"], "llama");
  EXPECT_EQ(folder.config["target_parameters"], nlohmann::json::array({kProj}));
  const auto name = diff->names().front();
  ASSERT_TRUE(folder.tensors.count(name + ".sft_indices"));
  EXPECT_EQ(folder.tensors[name + ".sft_indices"].scalar_type(), torch::kInt64);
  EXPECT_EQ(folder.tensors[name + ".sft_values"].scalar_type(), torch::kFloat32);

  auto fresh = llama();
  auto loaded = modula::load_sparse_diff(*fresh, tmp / "sft");
  EXPECT_EQ(loaded->names(), diff->names());
  EXPECT_EQ(loaded->num_trainable(), diff->num_trainable());
  torch::NoGradGuard g;
  diff->apply(*model);
  loaded->apply(*fresh);
  EXPECT_TRUE(torch::equal(model->forward(batch()).logits, fresh->forward(batch()).logits));
}

TEST(SparseFt, ApplyThenRemoveRestoresBase) {
  auto model = llama();
  auto base = snapshot(*model);
  auto diff = random_diff(*model, 13);
  diff->apply(*model, 0.7);
  EXPECT_GT(max_diff(*model, base), 1e-3);
  diff->remove(*model, 0.7);
  EXPECT_LE(max_diff(*model, base), 1e-6);
}

TEST(SparseFt, CompositionEqualsSequentialApply) {
  auto a = llama(), b = llama();
  auto d1 = random_diff(*a, 17);
  auto d2 =
      random_diff(*a, 19, SparseDiffOptions().target_parameters({"down_proj.weight", "lm_head.weight"}).density(0.1));
  auto both = modula::compose({d1, d2});
  // The union of the masks, overlaps summed.
  int64_t overlap = 0;
  for (const auto& name : d1->names()) {
    if (!d2->contains(name)) continue;
    auto i1 = d1->indices(name), i2 = d2->indices(name);
    overlap += torch::isin(i1, i2).sum().item<int64_t>();
  }
  EXPECT_GT(overlap, 0);
  EXPECT_EQ(both->num_trainable(), d1->num_trainable() + d2->num_trainable() - overlap);
  both->apply(*a);
  modula::apply_all(*b, {d1, d2});
  auto ref = snapshot(*b);
  EXPECT_LE(max_diff(*a, ref), 1e-6);
  torch::NoGradGuard g;
  EXPECT_TRUE(torch::allclose(a->forward(batch()).logits, b->forward(batch()).logits, 1e-5, 1e-6));
  // Removing both restores θ₀; a scaled composition equals a scaled apply.
  modula::remove_all(*b, {d1, d2});
  auto base = llama();
  EXPECT_LE(max_diff(*b, snapshot(*base)), 1e-6);
  auto half = modula::compose({d1}, {0.5});
  half->apply(*base);
  d1->apply(*b, 0.5);
  EXPECT_LE(max_diff(*base, snapshot(*b)), 1e-7);
}

TEST(SparseFt, MergeIsPermanent) {
  auto model = llama();
  auto base = snapshot(*model);
  auto diff = random_diff(*model, 23);
  diff->attach(*model);
  diff->merge(*model);
  EXPECT_FALSE(diff->attached());
  for (const auto& name : diff->names()) {
    auto expected = base[name].reshape(-1).index_add(0, diff->indices(name), diff->values(name).detach());
    EXPECT_TRUE(torch::allclose(model->named_parameters()[name].reshape(-1), expected, 0, 1e-7)) << name;
  }
}

TEST(SparseFt, BadOptions) {
  auto model = llama();
  EXPECT_NE(error_of<std::invalid_argument>([&] { proj_options(0.0).validate(); }).find("[sparse_ft] density"),
            std::string::npos);
  EXPECT_NE(error_of<std::invalid_argument>([&] { proj_options(1.5).validate(); }).find("density"), std::string::npos);
  EXPECT_NE(error_of<std::invalid_argument>([&] { SparseDiffOptions().validate(); }).find("target_parameters"),
            std::string::npos);
  EXPECT_NE(error_of<std::invalid_argument>([&] { proj_options().k(-1).validate(); }).find("k must"),
            std::string::npos);
  auto unknown = error_of<std::invalid_argument>(
      [&] { modula::random_sparse_diff(*model, SparseDiffOptions().target_parameters({"no_such_proj.weight"}), 1); });
  EXPECT_NE(unknown.find("'no_such_proj.weight' matches no parameter"), std::string::npos) << unknown;
  EXPECT_NE(error_of<std::invalid_argument>([&] {
              proj_options().target_parameters({"re:(["}).validate();
            }).find("not a valid regex"),
            std::string::npos);
  EXPECT_NE(error_of<std::invalid_argument>([&] {
              modula::random_sparse_diff(*model, proj_options().k(1 << 30), 1);
            }).find("exceeds"),
            std::string::npos);
  SparseDiff d;
  EXPECT_THROW(d->add("model.norm.weight", {64}, torch::tensor({3, 64})), std::invalid_argument);
  EXPECT_THROW(d->add("model.norm.weight", {64}, torch::tensor({3, 3})), std::invalid_argument);
}

TEST(SparseFt, OneAttachedDiffPerParameter) {
  auto model = llama();
  auto d1 = random_diff(*model, 29), d2 = random_diff(*model, 31);
  d1->attach(*model);
  EXPECT_THROW(d2->attach(*model), std::logic_error);
  EXPECT_THROW(d1->apply(*model), std::logic_error);
  d1->detach();
  d2->attach(*model);
  d2->detach();
}

TEST(SparseFt, LoadRejectsCorruptFiles) {
  TempDir tmp;
  auto model = llama();
  auto diff = random_diff(*model, 37);
  const std::string dir = tmp / "sft", file = tmp / "sft/adapter_model.safetensors";
  const auto name = diff->names().front();
  auto rewrite = [&](const std::function<void(modula::io::NamedTensors&)>& edit) {
    modula::save_sparse_diff(diff, dir);
    auto f = modula::io::SafetensorsFile::open(file);
    modula::io::NamedTensors t;
    for (const auto& k : f.keys()) t.emplace_back(k, f.get(k).clone());
    edit(t);
    modula::io::save_safetensors(file, t);
    return error_of<std::runtime_error>([&] { modula::load_sparse_diff(*model, dir); });
  };
  auto out_of_range = rewrite([&](modula::io::NamedTensors& t) {
    for (auto& [k, v] : t)
      if (k == name + ".sft_indices") v.narrow(0, v.numel() - 1, 1).fill_(model->named_parameters()[name].numel());
  });
  EXPECT_NE(out_of_range.find(file), std::string::npos) << out_of_range;
  EXPECT_NE(out_of_range.find("'" + name + ".sft_indices'"), std::string::npos) << out_of_range;
  EXPECT_NE(out_of_range.find("out of range"), std::string::npos) << out_of_range;
  auto unknown = rewrite([&](modula::io::NamedTensors& t) {
    for (auto& [k, v] : t)
      if (k.rfind(name, 0) == 0) k = "model.layers.9.mlp.up_proj.weight" + k.substr(name.size());
  });
  EXPECT_NE(unknown.find("model.layers.9.mlp.up_proj.weight"), std::string::npos) << unknown;
  EXPECT_NE(unknown.find("does not have"), std::string::npos) << unknown;
  auto mismatch = rewrite([&](modula::io::NamedTensors& t) {
    for (auto& [k, v] : t)
      if (k == name + ".sft_values") v = v.narrow(0, 0, v.numel() - 1).clone();
  });
  EXPECT_NE(mismatch.find("shape mismatch"), std::string::npos) << mismatch;
  EXPECT_NE(mismatch.find(name + ".sft_values"), std::string::npos) << mismatch;
  auto repeated = rewrite([&](modula::io::NamedTensors& t) {
    for (auto& [k, v] : t)
      if (k == name + ".sft_indices") v.narrow(0, 1, 1).copy_(v.narrow(0, 0, 1));
  });
  EXPECT_NE(repeated.find("not sorted and unique"), std::string::npos) << repeated;
  auto orphan = rewrite([&](modula::io::NamedTensors& t) {
    t.erase(std::remove_if(t.begin(), t.end(), [&](auto& kv) { return kv.first == name + ".sft_values"; }), t.end());
  });
  EXPECT_NE(orphan.find("no partner"), std::string::npos) << orphan;

  // Shape recorded in the config differs from the model's parameter.
  modula::save_sparse_diff(diff, dir);
  auto config = modula::io::read_peft_folder(dir).config;
  config["parameter_shapes"][name] = {1, 2};
  std::ofstream(tmp / "sft/adapter_config.json") << config.dump();
  auto shape = error_of<std::runtime_error>([&] { modula::load_sparse_diff(*model, dir); });
  EXPECT_NE(shape.find("shape mismatch for key '" + name + "'"), std::string::npos) << shape;
  EXPECT_NE(shape.find("adapter_config.json"), std::string::npos) << shape;
}
