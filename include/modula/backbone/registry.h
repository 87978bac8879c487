// Architectures register by HF model_type; loading a checkpoint folder builds the
// backbone and copies its weights.
//
//   auto model = modula::load_backbone("models/llama");          // fp32 on CPU
//   modula::save_backbone(*model, "out/");                        // HF-loadable folder
#pragma once

#include <optional>

#include "modula/backbone/backbone.h"
#include "modula/io/safetensors.h"

namespace modula {

// Builds a randomly initialised backbone for config.model_type; throws ConfigError
// listing the supported types for an unknown one.
std::shared_ptr<Backbone> create_backbone(const io::ModelConfig& config);
std::vector<std::string> supported_model_types();

struct LoadOptions {
  torch::Device device = torch::kCPU;
  // Compute dtype; default fp32 on CPU, the checkpoint's fp16/bf16 (else bf16) on CUDA.
  std::optional<torch::ScalarType> dtype;
};

struct LoadReport {
  std::vector<std::string> unused_keys;  // in the checkpoint, not in the model
  std::vector<std::string> tied_keys;    // filled from their tie target
};

// Copies every parameter and buffer named like the model's from `ckpt`, converting
// dtype. Accepts checkpoints of the bare model (keys without the "model."/"bert."
// prefix). Throws io::SafetensorsError naming the key for missing tensors or shape
// mismatches.
LoadReport load_weights(Backbone& model, const io::Checkpoint& ckpt);

// config.json + model.safetensors (or shards) in `dir`.
std::shared_ptr<Backbone> load_backbone(const std::string& dir, const LoadOptions& options = {},
                                        LoadReport* report = nullptr);

// The HF state dict (tied copies left out), on CPU.
io::NamedTensors state_dict(Backbone& model);
// Writes config.json and model.safetensors that transformers loads.
void save_backbone(Backbone& model, const std::string& dir);

}  // namespace modula

namespace modula {

// HF-style initialisation: linear and embedding weights ~ N(0, std), biases 0,
// norm weights 1. Seeded, so the same seed gives the same model.
void init_weights(Backbone& model, double std, uint64_t seed);

}  // namespace modula
