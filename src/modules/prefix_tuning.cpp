#include "modula/modules/prompt.h"
#include "modula/util/error.h"

namespace modula {

void PrefixTuningOptions::validate() const {
  static constexpr std::string_view kTag = "prefix_tuning";
  if (num_virtual_tokens() <= 0) throw_error(kTag, "num_virtual_tokens must be positive");
  if (num_layers() <= 0 || num_heads() <= 0 || head_dim() <= 0)
    throw_error(kTag, "num_layers, num_heads and head_dim must be positive");
  if (projection() && encoder_hidden() <= 0) throw_error(kTag, "projection needs encoder_hidden > 0");
}

PrefixTuningImpl::PrefixTuningImpl(const PrefixTuningOptions& options_) : options(options_) {
  options.validate();
  const int64_t n = options.num_virtual_tokens(), full = options.num_layers() * 2 * options.token_dim();
  if (options.projection()) {
    // PEFT PrefixEncoder with prefix_projection: Linear -> tanh -> Linear.
    embedding = register_parameter("embedding", torch::randn({n, options.token_dim()}));
    mlp = register_module("mlp",
                          torch::nn::Sequential(torch::nn::Linear(options.token_dim(), options.encoder_hidden()),
                                                torch::nn::Tanh(), torch::nn::Linear(options.encoder_hidden(), full)));
  } else {
    embedding = register_parameter("embedding", torch::randn({n, full}));
  }
}

torch::Tensor PrefixTuningImpl::prompt_embeddings() const {
  return mlp ? const_cast<torch::nn::Sequential&>(mlp)->forward(embedding)
             : embedding;  // forward is non-const in libtorch
}

void PrefixTuningImpl::set_prompt_embeddings(const torch::Tensor& values) {
  const int64_t full = options.num_layers() * 2 * options.token_dim();
  if (values.dim() != 2 || values.size(0) != options.num_virtual_tokens() || values.size(1) != full)
    throw_error("prefix_tuning", "prompt_embeddings must be [" + std::to_string(options.num_virtual_tokens()) + ", " +
                                     std::to_string(full) + "], got " + c10::str(values.sizes()));
  if (mlp) {  // fixed values: drop the reparameterisation
    unregister_module("mlp");
    mlp = nullptr;
  }
  torch::NoGradGuard no_grad;
  embedding.set_data(
      values.detach().clone().to(embedding.device(), embedding.scalar_type()));  // same parameter, new shape
}

void PrefixTuningImpl::check_model(const Backbone& model) const {
  if (!model.causal()) throw_error("prefix_tuning", "needs a decoder with a KV cache");
  const auto& c = model.config();
  if (options.num_layers() != c.num_hidden_layers || options.num_heads() != c.num_key_value_heads ||
      options.head_dim() != c.head_dim)
    throw_error("prefix_tuning", "prefix is for " + std::to_string(options.num_layers()) + " layers x " +
                                     std::to_string(options.num_heads()) + " kv heads x " +
                                     std::to_string(options.head_dim()) + "; the model has " +
                                     std::to_string(c.num_hidden_layers) + " x " +
                                     std::to_string(c.num_key_value_heads) + " x " + std::to_string(c.head_dim));
}

torch::Tensor prefix_key_values(const torch::Tensor& prefix, const PrefixTuningOptions& o) {
  const int64_t B = prefix.size(0), n = prefix.size(1);
  return prefix.reshape({B, n, o.num_layers() * 2, o.num_heads(), o.head_dim()}).permute({2, 0, 3, 1, 4});
}

void PrefixTuningImpl::prepare(Backbone& model, BackboneInput& in, KVCache& scratch) {
  check_model(model);
  if (in.cache && in.cache->length() > 0) return;
  if (!in.cache) in.cache = &scratch;
  const int64_t B = in.inputs_embeds.defined() ? in.inputs_embeds.size(0) : in.input_ids.size(0);
  const int64_t n = options.num_virtual_tokens(), L = options.num_layers();
  auto dtype = model.parameters().front().scalar_type();
  auto values = prompt_embeddings().to(dtype);
  auto kv = prefix_key_values(values.unsqueeze(0).expand({B, n, values.size(1)}), options);
  for (int64_t l = 0; l < L; ++l) in.cache->append(static_cast<size_t>(l), kv[2 * l], kv[2 * l + 1]);
  auto device = kv.device();
  if (in.attention_mask.defined())
    in.attention_mask =
        torch::cat({torch::ones({B, n}, in.attention_mask.options().device(device)), in.attention_mask}, 1);
}

}  // namespace modula
