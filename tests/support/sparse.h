// Shared by the sparse fine-tuning and LT-SFT tests: the llama fixture, its projection
// weights as sparse targets, a causal LM loss and parameter snapshots.
#pragma once

#include <map>
#include <string>

#include "modula/backbone/registry.h"
#include "modula/modules/sparse_ft.h"
#include "support/temp_dir.h"

namespace modula::testing {

inline std::shared_ptr<Backbone> llama() { return load_backbone(fixture("hf/models/llama")); }

inline const char* const kProj = "re:model\\.layers\\.\\d+\\..*proj\\.weight";

inline SparseDiffOptions proj_options(double density = 0.05) {
  return SparseDiffOptions().target_parameters({kProj}).density(density).base_model_name_or_path("llama");
}

inline BackboneInput batch() {
  BackboneInput in;
  in.input_ids = torch::arange(10, 34, torch::kInt64).view({2, 12});
  return in;
}

// Next-token cross-entropy of ids [N, T].
inline torch::Tensor lm_loss(Backbone& model, const torch::Tensor& ids) {
  BackboneInput in;
  in.input_ids = ids;
  auto logits = model.forward(in).logits;
  const int64_t T = ids.size(1), V = logits.size(-1);
  return torch::nn::functional::cross_entropy(logits.narrow(1, 0, T - 1).reshape({-1, V}),
                                              ids.narrow(1, 1, T - 1).reshape({-1}));
}

inline std::map<std::string, torch::Tensor> snapshot(Backbone& model) {
  std::map<std::string, torch::Tensor> out;
  for (auto& p : model.named_parameters()) out[p.key()] = p.value().detach().clone();
  return out;
}

// Largest change of any parameter since `ref`.
inline double max_diff(Backbone& model, const std::map<std::string, torch::Tensor>& ref) {
  double m = 0;
  for (auto& p : model.named_parameters())
    m = std::max(m, (p.value().detach() - ref.at(p.key())).abs().max().item<double>());
  return m;
}

}  // namespace modula::testing
