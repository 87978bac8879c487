// Input composition (survey §3.2): modules that change what the backbone sees.
//   Prompt tuning (Lester et al. 2021): n virtual token embeddings prepended to the input.
//   Prefix tuning (Li & Liang 2021): per-layer key/value prefixes the queries attend to,
//     optionally reparameterised by an MLP during training.
//
// Shapes: P [n, H] (prompt), prefix [n, L·2·Hkv·D] laid out as PEFT saves it.
//
//   PrefixTuning prefix(PrefixTuningOptions(4, layers, kv_heads, head_dim));
//   auto out = forward_with(model, {prefix.ptr()}, input);
#pragma once

#include "modula/backbone/backbone.h"

namespace modula {

class InputModule : public torch::nn::Module {
 public:
  // Rewrites `in` for the first step of a sequence (its cache, if any, is empty):
  // may set inputs_embeds, extend attention_mask/token_type_ids, fill the cache.
  // `scratch` serves as the cache when `in` has none.
  virtual void prepare(Backbone& model, BackboneInput& in, KVCache& scratch) = 0;
  virtual int64_t num_virtual_tokens() const = 0;
  // What PEFT saves as "prompt_embeddings".
  virtual torch::Tensor prompt_embeddings() const = 0;
};

struct PromptTuningOptions {
  PromptTuningOptions(int64_t num_virtual_tokens, int64_t token_dim)
      : num_virtual_tokens_(num_virtual_tokens), token_dim_(token_dim) {}
  TORCH_ARG(int64_t, num_virtual_tokens);
  TORCH_ARG(int64_t, token_dim);
  TORCH_ARG(std::string, init) = "random";               // random | vocab | text (PEFT RANDOM/SAMPLE_VOCAB/TEXT)
  TORCH_ARG(std::vector<int64_t>, init_token_ids) = {};  // for init "text": tiled to n tokens
  TORCH_ARG(uint64_t, seed) = 0;

 public:  // TORCH_ARG leaves the section private
  void validate() const;
};

class PromptTuningImpl : public InputModule {
 public:
  PromptTuningImpl(const PromptTuningOptions& options, Backbone& model);
  void prepare(Backbone& model, BackboneInput& in, KVCache& scratch) override;
  int64_t num_virtual_tokens() const override { return options.num_virtual_tokens(); }
  torch::Tensor prompt_embeddings() const override { return embedding; }

  PromptTuningOptions options;
  torch::Tensor embedding;  // [n, H]
};
TORCH_MODULE(PromptTuning);

struct PrefixTuningOptions {
  PrefixTuningOptions(int64_t num_virtual_tokens, int64_t num_layers, int64_t num_heads, int64_t head_dim)
      : num_virtual_tokens_(num_virtual_tokens), num_layers_(num_layers), num_heads_(num_heads), head_dim_(head_dim) {}
  TORCH_ARG(int64_t, num_virtual_tokens);
  TORCH_ARG(int64_t, num_layers);
  TORCH_ARG(int64_t, num_heads);  // key/value heads (GQA: num_key_value_heads)
  TORCH_ARG(int64_t, head_dim);
  TORCH_ARG(bool, projection) = false;     // reparameterise with an MLP (PEFT prefix_projection)
  TORCH_ARG(int64_t, encoder_hidden) = 0;  // MLP width when projection

 public:  // TORCH_ARG leaves the section private
  void validate() const;
  int64_t token_dim() const { return num_heads() * head_dim(); }
};

class PrefixTuningImpl : public InputModule {
 public:
  explicit PrefixTuningImpl(const PrefixTuningOptions& options);
  void prepare(Backbone& model, BackboneInput& in, KVCache& scratch) override;
  int64_t num_virtual_tokens() const override { return options.num_virtual_tokens(); }
  torch::Tensor prompt_embeddings() const override;  // [n, L·2·token_dim]
  // Replaces the (projected) prefix by fixed values, e.g. loaded from PEFT.
  void set_prompt_embeddings(const torch::Tensor& values);
  // Throws std::invalid_argument when the prefix does not fit the model (layers, kv heads, head_dim).
  void check_model(const Backbone& model) const;

  PrefixTuningOptions options;
  torch::Tensor embedding;             // [n, L·2·token_dim], or [n, token_dim] with projection
  torch::nn::Sequential mlp{nullptr};  // projection only
};
TORCH_MODULE(PrefixTuning);

// Per-layer keys and values from prefixes [B, n, L·2·Hkv·D] laid out as PEFT saves them:
// view(B, n, 2L, Hkv, D).permute(2, 0, 3, 1, 4) -> [2L, B, Hkv, n, D]; layer l: k = [2l], v = [2l+1].
torch::Tensor prefix_key_values(const torch::Tensor& prefix, const PrefixTuningOptions& options);

// forward() after every input module prepared the input (in order).
BackboneOutput forward_with(Backbone& model, const std::vector<std::shared_ptr<InputModule>>& inputs, BackboneInput in);

}  // namespace modula
