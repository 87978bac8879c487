// Backbone: a pretrained transformer with HF-exact forward. Families: decoder
// (Llama/Qwen2/Mistral), GPT-2, encoder (BERT/RoBERTa/XLM-R). Parameter names equal
// the HF state-dict keys, so PEFT paths ("model.layers.0.self_attn.q_proj") name sites.
//
// Shapes: B batch, T new tokens, S = past + T tokens, H hidden, V vocab, L labels.
//
//   auto model = modula::load_backbone("path/to/llama");
//   auto out = model->forward({.input_ids = ids});   // out.logits [B,T,V]
#pragma once

#include <torch/torch.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "modula/io/hf_config.h"

namespace modula {

// Keys/values of past tokens, one pair per layer, [B, Hkv, S_past, D] each.
// Decoders append to it in forward(); the logits of incremental decoding equal the
// full forward's.
struct KVCache {
  std::vector<torch::Tensor> keys, values;
  int64_t length() const { return keys.empty() || !keys[0].defined() ? 0 : keys[0].size(2); }
  // Returns the concatenated keys/values of layer `layer` after appending k, v.
  std::pair<torch::Tensor, torch::Tensor> append(size_t layer, const torch::Tensor& k, const torch::Tensor& v);
  // Keeps only rows `index` (beam/batch pruning), [B'] int64.
  void select_rows(const torch::Tensor& index);
};

struct BackboneInput {
  torch::Tensor input_ids;       // [B,T] int64 (or inputs_embeds)
  torch::Tensor inputs_embeds;   // [B,T,H], used instead of input_ids when defined
  torch::Tensor attention_mask;  // [B,S] 1 = attend; undefined = all ones. S covers cache + new
  torch::Tensor token_type_ids;  // [B,T] encoders; undefined = zeros
  torch::Tensor position_ids;    // [B,T]; undefined = HF default (decoders: past + arange(T))
  KVCache* cache = nullptr;      // decoders only; appended in place
};

struct BackboneOutput {
  torch::Tensor last_hidden_state;  // [B,T,H] after the final norm (decoders) / encoder stack
  torch::Tensor logits;             // [B,T,V] (lm, mlm) or [B,L] (seq-cls); undefined for bare models
};

// Which output head the checkpoint carries, from config.architectures.
enum class Head { None, CausalLM, MaskedLM, SequenceClassification };
Head head_from_architecture(const io::ModelConfig& c);
std::string to_string(Head h);

class Backbone : public torch::nn::Module {
 public:
  explicit Backbone(io::ModelConfig config) : config_(std::move(config)) {}
  virtual BackboneOutput forward(const BackboneInput& in) = 0;
  virtual bool causal() const = 0;
  virtual Head head() const = 0;
  // Embeds token ids as the first layer sees them before positions are added
  // (prompt tuning prepends to this).
  virtual torch::Tensor embed_tokens(const torch::Tensor& input_ids) = 0;
  // Tensors tied to another parameter and thus absent from checkpoints
  // (e.g. "lm_head.weight" -> "model.embed_tokens.weight").
  virtual std::vector<std::pair<std::string, std::string>> tied_weights() const { return {}; }
  const io::ModelConfig& config() const { return config_; }

  // Activation checkpointing (Chen et al. 2016): with autograd, each layer keeps only its
  // input and recomputes its activations in the backward pass, trading one more forward
  // per layer for the memory of all but one layer's activations. Gradients are the same
  // (dropout replays its random numbers). Off by default; no effect without autograd or
  // with a KV cache.
  void set_activation_checkpointing(bool on) { checkpoint_layers_ = on; }
  bool activation_checkpointing() const { return checkpoint_layers_; }

 protected:
  // One layer of the stack: layer(h), checkpointed when that is switched on and applies.
  torch::Tensor run_layer(const std::function<torch::Tensor(const torch::Tensor&)>& layer, const torch::Tensor& h,
                          bool cached);
  io::ModelConfig config_;

 private:
  bool checkpoint_layers_ = false;
};

}  // namespace modula
