// PEFT adapter folders: adapter_config.json + adapter_model.safetensors, tensors keyed
// "base_model.model.<site path>.<name>" (e.g. ".lora_A.weight", ".ia3_l") or, for prompt
// learning, "prompt_embeddings". modula's own module types use the same layout with a
// "MODULA_*" peft_type.
#pragma once

#include <nlohmann/json.hpp>

#include "modula/io/config_field.h"
#include "modula/io/safetensors.h"

namespace modula::io {

inline const std::string kPeftPrefix = "base_model.model.";

struct PeftFolder {
  std::string dir;
  nlohmann::json config;                         // adapter_config.json
  std::string peft_type;                         // "LORA", "IA3", "PROMPT_TUNING", "PREFIX_TUNING", ...
  std::map<std::string, torch::Tensor> tensors;  // as keyed in the file
};

// Throws SafetensorsError / std::runtime_error naming the file for a missing config,
// invalid JSON, no peft_type, or a missing/corrupt adapter_model.safetensors.
PeftFolder read_peft_folder(const std::string& dir);
// Writes both files (tensors atomically); creates the folder.
void write_peft_folder(const std::string& dir, const nlohmann::json& config, const NamedTensors& tensors);

}  // namespace modula::io
