// Encoders BERT (Devlin et al. 2019), RoBERTa and XLM-R: post-LN blocks, token types,
// learned absolute positions (RoBERTa family: offset by padding_idx + 1).
// HF modeling_bert.py: a = LN(x + attn(x)); out = LN(a + ffn(a)).
#include <cmath>

#include "families.h"
#include "modula/backbone/fused_linear.h"
#include "modula/backbone/layers.h"
#include "modula/util/compat.h"
#include "modula/util/error.h"

namespace modula::detail {
// This family's blocks: a namespace of their own (a unity build joins the families' files).
namespace encoder {
namespace {

using torch::nn::Embedding;
using torch::nn::LayerNorm;

LayerNorm layer_norm(const io::ModelConfig& c) {
  return LayerNorm(torch::nn::LayerNormOptions({c.hidden_size}).eps(c.norm_eps));
}
Linear dense(int64_t in, int64_t out) { return Linear(LinearOptions(in, out)); }

// Block sites (post-LN): "…encoder.layer.N.attention" (x = layer input, y = attention.output.dense
// output) and "…encoder.layer.N.output" (x = the FFN input a, y = output.dense output), both
// before their residual add + LayerNorm.
class LayerImpl : public torch::nn::Module {
 public:
  LayerImpl(const io::ModelConfig& c)
      : heads_(c.num_attention_heads), head_dim_(c.hidden_size / c.num_attention_heads), act_(c.hidden_act) {
    attention = register_module("attention", std::make_shared<BlockSite>(BlockRole::Attention, c.hidden_size));
    query = register_at(*this, "attention.self.query", dense(c.hidden_size, c.hidden_size).ptr());
    key = register_at(*this, "attention.self.key", dense(c.hidden_size, c.hidden_size).ptr());
    value = register_at(*this, "attention.self.value", dense(c.hidden_size, c.hidden_size).ptr());
    attn_out = register_at(*this, "attention.output.dense", dense(c.hidden_size, c.hidden_size).ptr());
    attn_norm = register_at(*this, "attention.output.LayerNorm", layer_norm(c).ptr());
    intermediate = register_at(*this, "intermediate.dense", dense(c.hidden_size, c.intermediate_size).ptr());
    ffn = register_module("output", std::make_shared<BlockSite>(BlockRole::FeedForward, c.hidden_size));
    output = register_at(*this, "output.dense", dense(c.intermediate_size, c.hidden_size).ptr());
    output_norm = register_at(*this, "output.LayerNorm", layer_norm(c).ptr());
  }

  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& mask) {
    const int64_t B = x.size(0), T = x.size(1), H = heads_ * head_dim_;
    auto heads = [&](const torch::Tensor& t) { return t.view({B, T, heads_, head_dim_}).transpose(1, 2); };
    auto qkv = project({query.get(), key.get(), value.get()}, x);
    auto o = compat::attention(heads(qkv[0]), heads(qkv[1]), heads(qkv[2]), mask,
                               1.0 / std::sqrt(static_cast<double>(head_dim_)));
    auto a = attn_norm->forward(x + attention->adapt(x, attn_out->forward(o.transpose(1, 2).reshape({B, T, H}))));
    auto f = ffn->adapt(a, [&] { return output->forward(activation(act_, intermediate->forward(a))); });
    return output_norm->forward(a + f);
  }

  std::shared_ptr<LinearImpl> query, key, value, attn_out, intermediate, output;
  std::shared_ptr<torch::nn::LayerNormImpl> attn_norm, output_norm;
  std::shared_ptr<BlockSite> attention, ffn;  // block sites "attention" and "output"

 private:
  int64_t heads_, head_dim_;
  std::string act_;
};
TORCH_MODULE(Layer);

class Encoder : public Backbone {
 public:
  explicit Encoder(const io::ModelConfig& c)
      : Backbone(c),
        roberta_(c.model_type != "bert"),
        prefix_(roberta_ ? "roberta" : "bert"),
        head_(head_from_architecture(c)) {
    check_activation(c.hidden_act);
    if (head_ == Head::CausalLM)
      throw_error<ConfigError>("config", c.architecture() + ": encoders have no causal LM head");
    if (roberta_ && !c.pad_token_id)
      throw_error<ConfigError>("config", c.model_type + " needs pad_token_id (position offset)");
    const std::string p = prefix_ + ".";
    word = register_at(*this, p + "embeddings.word_embeddings", Embedding(c.vocab_size, c.hidden_size).ptr());
    position = register_at(*this, p + "embeddings.position_embeddings",
                           Embedding(c.max_position_embeddings, c.hidden_size).ptr());
    token_type = register_at(*this, p + "embeddings.token_type_embeddings",
                             Embedding(std::max<int64_t>(c.type_vocab_size, 1), c.hidden_size).ptr());
    embed_norm = register_at(*this, p + "embeddings.LayerNorm", layer_norm(c).ptr());
    layers = register_at(*this, p + "encoder.layer", torch::nn::ModuleList().ptr());
    for (int64_t i = 0; i < c.num_hidden_layers; ++i) layers->push_back(Layer(c));
    if (head_ == Head::MaskedLM) build_mlm_head(c);
    if (head_ == Head::SequenceClassification) build_cls_head(c);
  }

  bool causal() const override { return false; }
  Head head() const override { return head_; }
  torch::Tensor embed_tokens(const torch::Tensor& ids) override { return word->forward(ids); }
  std::vector<std::pair<std::string, std::string>> tied_weights() const override {
    if (head_ != Head::MaskedLM || !config_.tie_word_embeddings) return {};
    std::string decoder = roberta_ ? "lm_head.decoder.weight" : "cls.predictions.decoder.weight";
    return {{decoder, prefix_ + ".embeddings.word_embeddings.weight"}};
  }

  BackboneOutput forward(const BackboneInput& in) override {
    if (in.cache) throw_error(config_.model_type, "encoders take no KV cache");
    auto [B, T] = check_input(in, config_, 0);
    auto h = in.inputs_embeds.defined() ? in.inputs_embeds : word->forward(in.input_ids);
    auto dev = torch::dtype(torch::kInt64).device(h.device());
    auto token_types = in.token_type_ids.defined() ? in.token_type_ids : torch::zeros({B, T}, dev);
    h = h + token_type->forward(token_types) + position->forward(positions(in, B, T, dev));
    h = embed_norm->forward(h);
    auto mask = attention_bias(in.attention_mask, B, T, T, /*causal=*/false, 0, h.scalar_type(), h.device());
    for (auto& layer : *layers) {
      auto run = [l = layer->as<LayerImpl>(), mask](const torch::Tensor& x) { return l->forward(x, mask); };
      h = run_layer(run, h, /*cached=*/false);
    }
    BackboneOutput out;
    out.last_hidden_state = h;
    if (head_ == Head::MaskedLM) out.logits = mlm_logits(h);
    if (head_ == Head::SequenceClassification) out.logits = cls_logits(h);
    return out;
  }

  std::shared_ptr<torch::nn::EmbeddingImpl> word, position, token_type;
  std::shared_ptr<torch::nn::LayerNormImpl> embed_norm, head_norm;
  std::shared_ptr<torch::nn::ModuleListImpl> layers;
  std::shared_ptr<LinearImpl> head_dense, head_out;  // MLM transform / classifier layers
  torch::Tensor decoder_weight, decoder_bias;

 private:
  // HF create_position_ids_from_input_ids: padding_idx + cumsum(ids != pad), pad stays pad.
  torch::Tensor positions(const BackboneInput& in, int64_t B, int64_t T, torch::TensorOptions dev) {
    if (in.position_ids.defined()) return in.position_ids;
    if (!roberta_) return torch::arange(T, dev).expand({B, T});
    const int64_t pad = *config_.pad_token_id;
    if (!in.input_ids.defined()) return torch::arange(pad + 1, pad + 1 + T, dev).expand({B, T});
    auto not_pad = in.input_ids.ne(pad).to(torch::kInt64);
    return not_pad.cumsum(1) * not_pad + pad;
  }

  void build_mlm_head(const io::ModelConfig& c) {
    const std::string p = roberta_ ? "lm_head." : "cls.predictions.";
    head_dense =
        register_at(*this, p + (roberta_ ? "dense" : "transform.dense"), dense(c.hidden_size, c.hidden_size).ptr());
    head_norm = register_at(*this, p + (roberta_ ? "layer_norm" : "transform.LayerNorm"), layer_norm(c).ptr());
    auto* owner =
        roberta_ ? named_children()["lm_head"].get() : named_children()["cls"]->named_children()["predictions"].get();
    decoder_bias = owner->register_parameter("bias", torch::zeros({c.vocab_size}));
    if (!c.tie_word_embeddings) {
      auto decoder = std::make_shared<torch::nn::Module>();
      decoder_weight = decoder->register_parameter("weight", torch::empty({c.vocab_size, c.hidden_size}));
      owner->register_module("decoder", decoder);
    }
  }

  void build_cls_head(const io::ModelConfig& c) {
    if (roberta_) {  // RobertaClassificationHead: out_proj(tanh(dense(h[:,0])))
      head_dense = register_at(*this, "classifier.dense", dense(c.hidden_size, c.hidden_size).ptr());
      head_out = register_at(*this, "classifier.out_proj", dense(c.hidden_size, c.num_labels).ptr());
    } else {  // BertPooler + classifier
      head_dense = register_at(*this, "bert.pooler.dense", dense(c.hidden_size, c.hidden_size).ptr());
      head_out = register_at(*this, "classifier", dense(c.hidden_size, c.num_labels).ptr());
    }
  }

  torch::Tensor mlm_logits(const torch::Tensor& h) {
    // RoBERTa's lm_head always uses erf-GELU; BERT's transform uses hidden_act.
    auto t = head_norm->forward(activation(roberta_ ? "gelu" : config_.hidden_act, head_dense->forward(h)));
    auto w = decoder_weight.defined() ? decoder_weight : word->weight;
    return torch::nn::functional::linear(t, w, decoder_bias);
  }

  torch::Tensor cls_logits(const torch::Tensor& h) {
    auto first = h.select(1, 0);
    return head_out->forward(torch::tanh(head_dense->forward(first)));
  }

  bool roberta_;
  std::string prefix_;
  Head head_;
};

}  // namespace
}  // namespace encoder

std::shared_ptr<Backbone> make_encoder(const io::ModelConfig& c) { return std::make_shared<encoder::Encoder>(c); }

}  // namespace modula::detail
