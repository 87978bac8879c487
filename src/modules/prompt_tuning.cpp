#include <ATen/CPUGeneratorImpl.h>

#include "modula/modules/prompt.h"
#include "modula/util/error.h"

namespace modula {

void PromptTuningOptions::validate() const {
  static constexpr std::string_view kTag = "prompt_tuning";
  if (num_virtual_tokens() <= 0) throw_error(kTag, "num_virtual_tokens must be positive");
  if (token_dim() <= 0) throw_error(kTag, "token_dim must be positive");
  if (init() != "random" && init() != "vocab" && init() != "text")
    throw_error(kTag, "init must be random, vocab or text, got '" + init() + "'");
  if (init() == "text" && init_token_ids().empty()) throw_error(kTag, "init 'text' needs init_token_ids");
}

PromptTuningImpl::PromptTuningImpl(const PromptTuningOptions& options_, Backbone& model) : options(options_) {
  options.validate();
  const int64_t n = options.num_virtual_tokens();
  if (options.token_dim() != model.config().hidden_size)
    throw_error("prompt_tuning", "token_dim " + std::to_string(options.token_dim()) +
                                     " differs from the model's hidden_size " +
                                     std::to_string(model.config().hidden_size));
  torch::Generator gen = at::detail::createCPUGenerator(options.seed());
  torch::Tensor init;
  torch::NoGradGuard no_grad;
  auto device = model.parameters().front().device();
  if (options.init() == "random") {
    init = at::normal(0.0, 1.0, {n, options.token_dim()}, gen);  // nn.Embedding default
  } else {
    torch::Tensor ids;
    if (options.init() == "vocab") {
      ids = at::randint(model.config().vocab_size, {n}, gen, torch::kInt64);
    } else {  // PEFT TEXT init: the text's token ids repeated/truncated to n
      auto text = torch::tensor(options.init_token_ids(), torch::kInt64);
      ids = text.repeat({(n + text.size(0) - 1) / text.size(0)}).narrow(0, 0, n);
    }
    init = model.embed_tokens(ids.to(device)).detach().cpu().to(torch::kFloat32);
  }
  embedding = register_parameter("prompt_embeddings", init.to(device, model.parameters().front().scalar_type()));
}

void PromptTuningImpl::prepare(Backbone& model, BackboneInput& in, KVCache&) {
  if (in.cache && in.cache->length() > 0) return;  // the prompt is already in the cache
  auto embeds = in.inputs_embeds.defined() ? in.inputs_embeds : model.embed_tokens(in.input_ids);
  const int64_t B = embeds.size(0), n = options.num_virtual_tokens();
  in.inputs_embeds =
      torch::cat({embedding.unsqueeze(0).expand({B, n, embedding.size(1)}).to(embeds.dtype()), embeds}, 1);
  in.input_ids = torch::Tensor();
  auto opts = torch::TensorOptions().device(embeds.device());
  if (in.attention_mask.defined())
    in.attention_mask = torch::cat({torch::ones({B, n}, opts.dtype(in.attention_mask.dtype())), in.attention_mask}, 1);
  if (in.token_type_ids.defined())
    in.token_type_ids = torch::cat({torch::zeros({B, n}, opts.dtype(torch::kInt64)), in.token_type_ids}, 1);
  if (in.position_ids.defined()) throw_error("prompt_tuning", "explicit position_ids are not supported");
}

BackboneOutput forward_with(Backbone& model, const std::vector<std::shared_ptr<InputModule>>& inputs,
                            BackboneInput in) {
  KVCache scratch;
  for (const auto& m : inputs) m->prepare(model, in, scratch);
  return model.forward(in);
}

}  // namespace modula
