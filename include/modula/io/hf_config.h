// Hugging Face config.json -> ModelConfig, for llama, qwen2, mistral, gpt2, bert,
// roberta and xlm-roberta. Accepts both the spellings of checkpoints in the wild
// (rope_theta / rope_scaling at top level, GPT-2's n_embd/n_layer/n_head) and
// transformers 5 (rope_parameters).
//
//   modula::io::ModelConfig c = modula::io::load_hf_config("path/to/model");  // dir or file
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "modula/util/error.h"

namespace modula::io {

// RoPE frequency scaling (HF "rope_type"): default, linear, llama3.
struct RopeScaling {
  std::string type = "default";
  double factor = 1.0;
  double low_freq_factor = 1.0;                     // llama3
  double high_freq_factor = 4.0;                    // llama3
  int64_t original_max_position_embeddings = 8192;  // llama3
};

struct ModelConfig {
  std::string model_type;                  // "llama", "gpt2", "bert", ...
  std::vector<std::string> architectures;  // e.g. {"LlamaForCausalLM"}
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;  // = num_attention_heads unless GQA
  int64_t head_dim = 0;             // = hidden_size / num_attention_heads unless given
  int64_t max_position_embeddings = 0;
  double norm_eps = 1e-5;  // rms_norm_eps / layer_norm_eps / layer_norm_epsilon
  std::string hidden_act;  // silu, gelu, gelu_new, relu, ...
  bool tie_word_embeddings = false;
  bool qkv_bias = false;  // bias on q/k/v projections (qwen2: true)
  bool o_bias = false;    // bias on the attention output projection
  bool mlp_bias = false;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  std::optional<int64_t> sliding_window;
  int64_t type_vocab_size = 0;  // encoders
  std::optional<int64_t> pad_token_id, bos_token_id;
  std::vector<int64_t> eos_token_ids;
  int64_t num_labels = 2;                        // sequence classification
  bool scale_attn_weights = true;                // gpt2
  bool scale_attn_by_inverse_layer_idx = false;  // gpt2
  std::string torch_dtype = "float32";           // "dtype" / "torch_dtype" as saved
  nlohmann::json raw;                            // the whole file, for fields not modelled here

  // The first of `architectures`, or "" when absent.
  std::string architecture() const { return architectures.empty() ? "" : architectures.front(); }
};

// Parses and validates (positive sizes, heads dividing hidden size, GQA divisibility,
// known rope type). `source` names the file in error messages.
ModelConfig parse_hf_config(const nlohmann::json& j, const std::string& source = "config.json");
// path: a config.json or a folder containing one.
ModelConfig load_hf_config(const std::string& path);
// The inverse: a config.json that transformers loads (transformers-5 spelling plus the
// top-level rope_theta legacy spelling).
nlohmann::json to_hf_json(const ModelConfig& c);

}  // namespace modula::io
