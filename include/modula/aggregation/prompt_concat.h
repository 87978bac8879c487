// Input aggregation (survey §5): several prompt-tuning modules as one prompt, their
// virtual tokens concatenated in order:
//
//   [P_1; P_2; …; P_k; x]      (n = Σ n_i virtual tokens)
//
// e.g. a language prompt and a task prompt. Equal to one PromptTuning holding cat(P_i).
#pragma once

#include <vector>

#include "modula/modules/prompt.h"

namespace modula {

class ConcatenatedPromptImpl : public InputModule {
 public:
  // Throws std::invalid_argument if `prompts` is empty, holds a null, or the token
  // dimensions differ.
  explicit ConcatenatedPromptImpl(std::vector<std::shared_ptr<PromptTuningImpl>> prompts);
  void prepare(Backbone& model, BackboneInput& in, KVCache& scratch) override;
  int64_t num_virtual_tokens() const override;
  torch::Tensor prompt_embeddings() const override;  // cat(P_1, …, P_k) [n, H]

  std::vector<std::shared_ptr<PromptTuningImpl>> prompts;  // not registered (their adapters own them)
};
TORCH_MODULE(ConcatenatedPrompt);

}  // namespace modula
