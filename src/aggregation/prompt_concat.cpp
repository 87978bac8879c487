#include "modula/aggregation/prompt_concat.h"

#include <stdexcept>

#include "modula/util/error.h"

namespace modula {

ConcatenatedPromptImpl::ConcatenatedPromptImpl(std::vector<std::shared_ptr<PromptTuningImpl>> prompts_)
    : prompts(std::move(prompts_)) {
  if (prompts.empty()) throw_error("concat", "needs at least one prompt");
  for (size_t i = 0; i < prompts.size(); ++i) {
    if (!prompts[i]) throw_error("concat", "prompt " + std::to_string(i) + " is null");
    if (prompts[i]->options.token_dim() != prompts[0]->options.token_dim())
      throw_error("concat", "prompt " + std::to_string(i) + " has token_dim " +
                                std::to_string(prompts[i]->options.token_dim()) + ", prompt 0 has " +
                                std::to_string(prompts[0]->options.token_dim()));
  }
}

// Each prompt prepends itself, so prepending P_k first and P_1 last gives [P_1; …; P_k; x].
void ConcatenatedPromptImpl::prepare(Backbone& model, BackboneInput& in, KVCache& scratch) {
  for (auto it = prompts.rbegin(); it != prompts.rend(); ++it) (*it)->prepare(model, in, scratch);
}

int64_t ConcatenatedPromptImpl::num_virtual_tokens() const {
  int64_t n = 0;
  for (const auto& p : prompts) n += p->num_virtual_tokens();
  return n;
}

torch::Tensor ConcatenatedPromptImpl::prompt_embeddings() const {
  std::vector<torch::Tensor> parts;
  for (const auto& p : prompts) parts.push_back(p->prompt_embeddings());
  return torch::cat(parts, 0);
}

}  // namespace modula
