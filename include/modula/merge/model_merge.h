// Full-model merging, one tensor at a time, with mergekit's semantics (survey §5.1,
// parameter aggregation). θ_i: model i's tensor, θ_0: the base's, τ_i = θ_i − θ_0.
//
//   linear           θ = Σ w_i θ_i / Σ w_i                 (Wortsman et al. 2022, model soups;
//                                                            normalize=false drops the division)
//   task_arithmetic  θ = θ_0 + λ Σ w_i τ_i                  (Ilharco et al. 2023)
//   ties             τ̂_i = trim(τ_i, density_i); γ = sgn(Σ w_i τ̂_i);
//                    θ = θ_0 + λ Σ_{i: sgn τ̂_i = γ} w_i τ̂_i / Σ_{i: agree} w_i   (Yadav et al. 2023)
//   dare_linear      τ̂_i = m_i ⊙ τ_i / density_i, m_i ~ Bernoulli(density_i); θ = θ_0 + λ Σ w_i τ̂_i
//   dare_ties        DARE's τ̂_i, then TIES' sign election and disjoint mean (Yu et al. 2024)
//   slerp            θ = sin((1−t)Ω)/sin Ω · θ_0 + sin(tΩ)/sin Ω · θ_1,  cos Ω = θ̂_0·θ̂_1
//                    (lerp when |cos Ω| > 0.9995; Shoemake 1985)
//   model_stock      t = N cos θ / (1 + (N−1) cos θ),  θ = t · mean_i θ_i + (1−t) θ_0
//                    (cos θ: mean pairwise cosine of the τ_i; Jang et al. 2024)
//
// normalize (divide by Σ w_i, or by the agreeing weights for the TIES methods) defaults to
// true for linear and ties and false otherwise, as in mergekit.
//
//   auto o = modula::ModelMergeOptions().method("ties");
//   auto gen = modula::seeded_generator(0);
//   auto theta = modula::merge_tensor(o, base, {{a, 0.7, 0.5}, {b, 0.3, 0.5}}, 0.5, gen);
#pragma once

#include <torch/torch.h>

#include <optional>
#include <string>
#include <vector>

namespace modula {

struct ModelMergeOptions {
  TORCH_ARG(std::string, method) = "linear";
  TORCH_ARG(std::optional<bool>, normalize);  // unset: the method's default (above)
  TORCH_ARG(double, lambda) = 1.0;            // scales the merged task vector
  TORCH_ARG(std::string, consensus) = "sum";  // ties sign election: "sum" (Σ w τ) or "count" (Σ sgn)
  TORCH_ARG(bool, rescale) = true;            // dare: divide the kept entries by density
  TORCH_ARG(bool, filter_wise) = false;       // model_stock: one t per output row

 public:
  // Throws std::invalid_argument naming the field.
  void validate() const;
  bool normalized() const;
};

// One model's tensor with its weight w_i and density (fraction kept by ties/dare).
struct MergeTerm {
  torch::Tensor value;
  double weight = 1.0;
  double density = 1.0;
};

std::vector<std::string> model_merge_methods();
bool method_needs_base(const std::string& method);  // every method but linear

// The merged tensor, in float32 (callers cast). `base` may be undefined for linear; slerp
// takes exactly one model (θ_1) with interpolation factor t; model_stock at least two.
// Throws std::invalid_argument on shape mismatches or a missing base.
torch::Tensor merge_tensor(const ModelMergeOptions& options, const torch::Tensor& base,
                           const std::vector<MergeTerm>& models, double t, at::Generator& gen);

}  // namespace modula
