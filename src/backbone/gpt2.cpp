// GPT-2 (Radford et al. 2019): learned positions, pre-LN blocks, Conv1D weights [in, out].
// HF modeling_gpt2.py: h = x + attn(ln_1(x)); out = h + mlp(ln_2(h)).
#include <cmath>

#include "families.h"
#include "modula/backbone/layers.h"
#include "modula/util/compat.h"
#include "modula/util/error.h"

namespace modula::detail {
// This family's blocks: a namespace of their own (a unity build joins the families' files).
namespace gpt2 {
namespace {

LinearOptions conv1d(int64_t in, int64_t out) { return LinearOptions(in, out).conv1d_layout(true); }

// Block site "transformer.h.N.attn": x = ln_1 output, y = c_proj output.
class AttentionImpl : public BlockSite {
 public:
  AttentionImpl(const io::ModelConfig& c, size_t layer)
      : BlockSite(BlockRole::Attention, c.hidden_size),
        layer_(layer),
        heads_(c.num_attention_heads),
        head_dim_(c.hidden_size / c.num_attention_heads) {
    c_attn = register_module("c_attn", Linear(conv1d(c.hidden_size, 3 * c.hidden_size)));
    c_proj = register_module("c_proj", Linear(conv1d(c.hidden_size, c.hidden_size)));
    scale_ = c.scale_attn_weights ? 1.0 / std::sqrt(static_cast<double>(head_dim_)) : 1.0;
    if (c.scale_attn_by_inverse_layer_idx) scale_ /= static_cast<double>(layer + 1);
  }

  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& mask, KVCache* cache) {
    const int64_t B = x.size(0), T = x.size(1), H = heads_ * head_dim_;
    auto qkv = c_attn(x).split(H, -1);
    auto heads = [&](const torch::Tensor& t) { return t.view({B, T, heads_, head_dim_}).transpose(1, 2); };
    auto q = heads(qkv[0]), k = heads(qkv[1]), v = heads(qkv[2]);
    if (cache) std::tie(k, v) = cache->append(layer_, k, v);
    auto o = compat::attention(q, k, v, mask, scale_);
    return adapt(x, c_proj(o.transpose(1, 2).reshape({B, T, H})));
  }

  Linear c_attn{nullptr}, c_proj{nullptr};

 private:
  size_t layer_;
  int64_t heads_, head_dim_;
  double scale_;
};
TORCH_MODULE(Attention);

// Block site "transformer.h.N.mlp": x = ln_2 output, y = c_proj output.
class MlpImpl : public BlockSite {
 public:
  explicit MlpImpl(const io::ModelConfig& c) : BlockSite(BlockRole::FeedForward, c.hidden_size), act_(c.hidden_act) {
    c_fc = register_module("c_fc", Linear(conv1d(c.hidden_size, c.intermediate_size)));
    c_proj = register_module("c_proj", Linear(conv1d(c.intermediate_size, c.hidden_size)));
  }
  torch::Tensor forward(const torch::Tensor& x) {
    return adapt(x, [&] { return c_proj(activation(act_, c_fc(x))); });
  }
  Linear c_fc{nullptr}, c_proj{nullptr};

 private:
  std::string act_;
};
TORCH_MODULE(Mlp);

torch::nn::LayerNorm layer_norm(const io::ModelConfig& c) {
  return torch::nn::LayerNorm(torch::nn::LayerNormOptions({c.hidden_size}).eps(c.norm_eps));
}

class BlockImpl : public torch::nn::Module {
 public:
  BlockImpl(const io::ModelConfig& c, size_t i) {
    ln_1 = register_module("ln_1", layer_norm(c));
    attn = register_module("attn", Attention(c, i));
    ln_2 = register_module("ln_2", layer_norm(c));
    mlp = register_module("mlp", Mlp(c));
  }
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& mask, KVCache* cache) {
    auto h = x + attn->forward(ln_1(x), mask, cache);
    return h + mlp(ln_2(h));
  }
  torch::nn::LayerNorm ln_1{nullptr}, ln_2{nullptr};
  Attention attn{nullptr};
  Mlp mlp{nullptr};
};
TORCH_MODULE(Block);

// HF GPT2Model: the "transformer." prefix of checkpoint keys.
class StackImpl : public torch::nn::Module {
 public:
  explicit StackImpl(const io::ModelConfig& c) {
    wte = register_module("wte", torch::nn::Embedding(c.vocab_size, c.hidden_size));
    wpe = register_module("wpe", torch::nn::Embedding(c.max_position_embeddings, c.hidden_size));
    h = register_module("h", torch::nn::ModuleList());
    for (int64_t i = 0; i < c.num_hidden_layers; ++i) h->push_back(Block(c, static_cast<size_t>(i)));
    ln_f = register_module("ln_f", layer_norm(c));
  }
  torch::nn::Embedding wte{nullptr}, wpe{nullptr};
  torch::nn::ModuleList h{nullptr};
  torch::nn::LayerNorm ln_f{nullptr};
};
TORCH_MODULE(Stack);

class Gpt2 : public Backbone {
 public:
  explicit Gpt2(const io::ModelConfig& c) : Backbone(c), head_(head_from_architecture(c)) {
    check_activation(c.hidden_act);
    if (head_ == Head::SequenceClassification)
      throw_error<ConfigError>("config",
                               c.architecture() + ": sequence classification heads are supported for encoders only");
    transformer = register_module("transformer", Stack(c));
    if (head_ == Head::CausalLM && !c.tie_word_embeddings)
      lm_head = register_module("lm_head", Linear(LinearOptions(c.hidden_size, c.vocab_size).bias(false)));
  }

  bool causal() const override { return true; }
  Head head() const override { return head_; }
  torch::Tensor embed_tokens(const torch::Tensor& ids) override { return transformer->wte(ids); }
  std::vector<std::pair<std::string, std::string>> tied_weights() const override {
    if (head_ == Head::CausalLM && config_.tie_word_embeddings) return {{"lm_head.weight", "transformer.wte.weight"}};
    return {};
  }

  BackboneOutput forward(const BackboneInput& in) override {
    const int64_t past = in.cache ? in.cache->length() : 0;
    auto [B, T] = check_input(in, config_, past);
    auto h = in.inputs_embeds.defined() ? in.inputs_embeds : transformer->wte(in.input_ids);
    auto position_ids =
        in.position_ids.defined()
            ? in.position_ids
            : torch::arange(past, past + T, torch::dtype(torch::kInt64).device(h.device())).expand({B, T});
    if (position_ids.max().item<int64_t>() >= config_.max_position_embeddings)
      throw_error("gpt2", "position " + std::to_string(position_ids.max().item<int64_t>()) + " exceeds n_positions " +
                              std::to_string(config_.max_position_embeddings));
    h = h + transformer->wpe(position_ids);
    auto mask = attention_bias(in.attention_mask, B, T, past + T, /*causal=*/true, 0, h.scalar_type(), h.device());
    for (auto& block : *transformer->h) {
      auto run = [b = block->as<BlockImpl>(), mask, cache = in.cache](const torch::Tensor& x) {
        return b->forward(x, mask, cache);
      };
      h = run_layer(run, h, in.cache != nullptr);
    }
    BackboneOutput out;
    out.last_hidden_state = transformer->ln_f(h);
    if (head_ == Head::CausalLM)
      out.logits = lm_head ? lm_head(out.last_hidden_state)
                           : torch::nn::functional::linear(out.last_hidden_state, transformer->wte->weight);
    return out;
  }

  Stack transformer{nullptr};
  Linear lm_head{nullptr};

 private:
  Head head_;
};

}  // namespace
}  // namespace gpt2

std::shared_ptr<Backbone> make_gpt2(const io::ModelConfig& c) { return std::make_shared<gpt2::Gpt2>(c); }

}  // namespace modula::detail
