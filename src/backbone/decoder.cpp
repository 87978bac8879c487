// Llama-family decoder (Llama, Qwen2, Mistral): RMSNorm, RoPE, GQA, SwiGLU.
// HF modeling_llama.py: h = x + attn(norm1(x)); out = h + mlp(norm2(h)).
#include <cmath>

#include "families.h"
#include "modula/backbone/fused_linear.h"
#include "modula/backbone/layers.h"
#include "modula/util/compat.h"

namespace modula::detail {
// This family's blocks: a namespace of their own (a unity build joins the families' files).
namespace decoder {
namespace {

// Block site "model.layers.N.self_attn": x = input_layernorm output, y = o_proj output.
class AttentionImpl : public BlockSite {
 public:
  AttentionImpl(const io::ModelConfig& c, size_t layer)
      : BlockSite(BlockRole::Attention, c.hidden_size),
        layer_(layer),
        heads_(c.num_attention_heads),
        kv_heads_(c.num_key_value_heads),
        head_dim_(c.head_dim),
        window_(c.sliding_window.value_or(0)) {
    q_proj = register_module("q_proj", Linear(LinearOptions(c.hidden_size, heads_ * head_dim_).bias(c.qkv_bias)));
    k_proj = register_module("k_proj", Linear(LinearOptions(c.hidden_size, kv_heads_ * head_dim_).bias(c.qkv_bias)));
    v_proj = register_module("v_proj", Linear(LinearOptions(c.hidden_size, kv_heads_ * head_dim_).bias(c.qkv_bias)));
    o_proj = register_module("o_proj", Linear(LinearOptions(heads_ * head_dim_, c.hidden_size).bias(c.o_bias)));
  }

  // x [B,T,H]; cos/sin [B,T,D]; mask [B,1,T,S].
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin,
                        const torch::Tensor& mask, KVCache* cache) {
    const int64_t B = x.size(0), T = x.size(1);
    auto qkv = project({q_proj.get(), k_proj.get(), v_proj.get()}, x);
    auto q = qkv[0].view({B, T, heads_, head_dim_}).transpose(1, 2);
    auto k = qkv[1].view({B, T, kv_heads_, head_dim_}).transpose(1, 2);
    auto v = qkv[2].view({B, T, kv_heads_, head_dim_}).transpose(1, 2);
    q = Rotary::apply(q, cos, sin);
    k = Rotary::apply(k, cos, sin);
    if (cache) std::tie(k, v) = cache->append(layer_, k, v);
    // GQA: query head h reads key/value head h / (heads / kv_heads).
    const int64_t rep = heads_ / kv_heads_;
    if (rep > 1) {
      k = k.repeat_interleave(rep, 1);
      v = v.repeat_interleave(rep, 1);
    }
    auto o = compat::attention(q, k, v, mask, 1.0 / std::sqrt(static_cast<double>(head_dim_)));
    return adapt(x, o_proj(o.transpose(1, 2).reshape({B, T, heads_ * head_dim_})));
  }

  Linear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, o_proj{nullptr};

 private:
  size_t layer_;
  int64_t heads_, kv_heads_, head_dim_, window_;
};
TORCH_MODULE(Attention);

// SwiGLU (Shazeer 2020): down(act(gate(x)) * up(x)).
// Block site "model.layers.N.mlp": x = post_attention_layernorm output, y = down_proj output.
class MlpImpl : public BlockSite {
 public:
  explicit MlpImpl(const io::ModelConfig& c) : BlockSite(BlockRole::FeedForward, c.hidden_size), act_(c.hidden_act) {
    gate_proj =
        register_module("gate_proj", Linear(LinearOptions(c.hidden_size, c.intermediate_size).bias(c.mlp_bias)));
    up_proj = register_module("up_proj", Linear(LinearOptions(c.hidden_size, c.intermediate_size).bias(c.mlp_bias)));
    down_proj =
        register_module("down_proj", Linear(LinearOptions(c.intermediate_size, c.hidden_size).bias(c.mlp_bias)));
  }
  torch::Tensor forward(const torch::Tensor& x) {
    return adapt(x, [&] {
      auto gate_up = project({gate_proj.get(), up_proj.get()}, x);
      return down_proj(activation(act_, gate_up[0]) * gate_up[1]);
    });
  }
  Linear gate_proj{nullptr}, up_proj{nullptr}, down_proj{nullptr};

 private:
  std::string act_;
};
TORCH_MODULE(Mlp);

class LayerImpl : public torch::nn::Module {
 public:
  LayerImpl(const io::ModelConfig& c, size_t i) {
    self_attn = register_module("self_attn", Attention(c, i));
    mlp = register_module("mlp", Mlp(c));
    input_layernorm = register_module("input_layernorm", RMSNorm(c.hidden_size, c.norm_eps));
    post_attention_layernorm = register_module("post_attention_layernorm", RMSNorm(c.hidden_size, c.norm_eps));
  }
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin,
                        const torch::Tensor& mask, KVCache* cache) {
    auto h = x + self_attn->forward(input_layernorm(x), cos, sin, mask, cache);
    return h + mlp(post_attention_layernorm(h));
  }
  Attention self_attn{nullptr};
  Mlp mlp{nullptr};
  RMSNorm input_layernorm{nullptr}, post_attention_layernorm{nullptr};
};
TORCH_MODULE(Layer);

// HF LlamaModel: the "model." prefix of checkpoint keys.
class StackImpl : public torch::nn::Module {
 public:
  explicit StackImpl(const io::ModelConfig& c) {
    embed_tokens = register_module("embed_tokens", torch::nn::Embedding(c.vocab_size, c.hidden_size));
    layers = register_module("layers", torch::nn::ModuleList());
    for (int64_t i = 0; i < c.num_hidden_layers; ++i) layers->push_back(Layer(c, static_cast<size_t>(i)));
    norm = register_module("norm", RMSNorm(c.hidden_size, c.norm_eps));
  }
  torch::nn::Embedding embed_tokens{nullptr};
  torch::nn::ModuleList layers{nullptr};
  RMSNorm norm{nullptr};
};
TORCH_MODULE(Stack);

class Decoder : public Backbone {
 public:
  explicit Decoder(const io::ModelConfig& c) : Backbone(c), rotary_(c), head_(head_from_architecture(c)) {
    check_activation(c.hidden_act);
    if (head_ == Head::SequenceClassification)
      throw_error<ConfigError>("config",
                               c.architecture() + ": sequence classification heads are supported for encoders only");
    model = register_module("model", Stack(c));
    if (head_ == Head::CausalLM && !c.tie_word_embeddings)
      lm_head = register_module("lm_head", Linear(LinearOptions(c.hidden_size, c.vocab_size).bias(false)));
  }

  bool causal() const override { return true; }
  Head head() const override { return head_; }
  torch::Tensor embed_tokens(const torch::Tensor& ids) override { return model->embed_tokens(ids); }
  std::vector<std::pair<std::string, std::string>> tied_weights() const override {
    if (head_ == Head::CausalLM && config_.tie_word_embeddings)
      return {{"lm_head.weight", "model.embed_tokens.weight"}};
    return {};
  }

  BackboneOutput forward(const BackboneInput& in) override {
    const int64_t past = in.cache ? in.cache->length() : 0;
    auto [B, T] = check_input(in, config_, past);
    auto h = in.inputs_embeds.defined() ? in.inputs_embeds : model->embed_tokens(in.input_ids);
    auto position_ids =
        in.position_ids.defined()
            ? in.position_ids
            : torch::arange(past, past + T, torch::dtype(torch::kInt64).device(h.device())).expand({B, T});
    auto [cos, sin] = rotary_.cos_sin(position_ids, h.scalar_type());
    auto mask = attention_bias(in.attention_mask, B, T, past + T, /*causal=*/true, config_.sliding_window.value_or(0),
                               h.scalar_type(), h.device());
    for (auto& layer : *model->layers) {
      auto run = [l = layer->as<LayerImpl>(), c = cos, s = sin, mask, cache = in.cache](const torch::Tensor& x) {
        return l->forward(x, c, s, mask, cache);
      };
      h = run_layer(run, h, in.cache != nullptr);
    }
    BackboneOutput out;
    out.last_hidden_state = model->norm(h);
    if (head_ == Head::CausalLM)
      out.logits = lm_head ? lm_head(out.last_hidden_state)
                           : torch::nn::functional::linear(out.last_hidden_state, model->embed_tokens->weight);
    return out;
  }

  Stack model{nullptr};
  Linear lm_head{nullptr};

 private:
  Rotary rotary_;
  Head head_;
};

}  // namespace
}  // namespace decoder

std::shared_ptr<Backbone> make_decoder(const io::ModelConfig& c) { return std::make_shared<decoder::Decoder>(c); }

}  // namespace modula::detail
