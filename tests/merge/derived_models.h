// Tiny models for merge tests: the llama fixture as base and copies with seeded
// perturbations of every floating-point tensor (θ_i = θ_0 + scale · N(0, 1)).
#pragma once

#include <string>

#include "modula/backbone/registry.h"
#include "modula/io/safetensors.h"
#include "modula/util/fs.h"

namespace modula::testing {

inline std::string llama_fixture() { return std::string(MODULA_FIXTURES) + "/hf/models/llama"; }

// Writes config.json + model.safetensors of base + scale·noise(seed) into `dir`.
inline void write_derived_model(const std::string& dir, uint64_t seed, double scale) {
  auto model = load_backbone(llama_fixture());
  torch::manual_seed(seed);
  torch::NoGradGuard no_grad;
  for (auto& p : model->named_parameters())
    if (p.value().is_floating_point()) p.value().add_(torch::randn_like(p.value()) * scale);
  save_backbone(*model, dir);
}

// base/ (the fixture, with its tokenizer files if any), a/ and b/ under `root`.
inline void write_merge_models(const std::string& root) {
  auto model = load_backbone(llama_fixture());
  save_backbone(*model, fs::join(root, "base"));
  for (const char* f : {"tokenizer.json", "tokenizer_config.json"})
    if (fs::is_file(fs::join(llama_fixture(), f)))
      fs::copy_file(fs::join(llama_fixture(), f), fs::join(root, "base/" + std::string(f)));
  write_derived_model(fs::join(root, "a"), 1, 0.01);
  write_derived_model(fs::join(root, "b"), 2, 0.01);
}

}  // namespace modula::testing
