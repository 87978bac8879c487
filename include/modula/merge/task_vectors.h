// Task-vector primitives of parameter aggregation (survey §5.1): the trim / elect /
// disjoint-merge steps of TIES (Yadav et al. 2023) and the drop-and-rescale of DARE
// (Yu et al. 2024), on task vectors τ_i = θ_i − θ_base (Ilharco et al. 2023).
//
// Every function takes the M task tensors stacked on dim 0, [M, ...], so one kernel
// serves all of them:
//
//   auto tau = torch::stack({t0 - base, t1 - base});           // [2, out, in]
//   auto kept = modula::magnitude_prune(tau, 0.2);              // top 20% |τ| per task
//   auto mask = modula::majority_sign_mask(kept, modula::SignMethod::Total);
//   auto merged = base + modula::disjoint_merge(kept, mask);
#pragma once

#include <torch/torch.h>

#include <string>
#include <vector>

namespace modula {

// TIES sign election: γ = sgn(Σ_i τ_i) ("total", mergekit "sum") or sgn(Σ_i sgn τ_i)
// ("frequency", mergekit "count").
enum class SignMethod { Total, Frequency };
// Accepts "total"/"sum" and "frequency"/"count"; std::invalid_argument naming the value.
SignMethod sign_method_from_string(const std::string& name);

// TIES trim: keeps the k = ⌊density·n⌋ entries of largest |τ_i| in each task tensor
// (n = its element count), zeroes the rest. density >= 1 keeps everything.
torch::Tensor magnitude_prune(const torch::Tensor& stacked, double density);
// The same with one density per task (still one topk over all tasks).
torch::Tensor magnitude_prune(const torch::Tensor& stacked, const std::vector<double>& densities);

// DARE: keeps each entry with probability `density` (mask ~ Bernoulli(density), drawn on
// the CPU from `gen` so a seed gives the same mask on any device), and divides the kept
// ones by density when `rescale` (E[τ̃] = τ). density >= 1 keeps everything.
torch::Tensor random_prune(const torch::Tensor& stacked, double density, bool rescale, at::Generator& gen);
// The same with one density per task.
torch::Tensor random_prune(const torch::Tensor& stacked, const std::vector<double>& densities, bool rescale,
                           at::Generator& gen);
// A CPU generator seeded with `seed` for random_prune.
at::Generator seeded_generator(uint64_t seed);

// TIES elect: true where sgn(τ_i) equals the elected sign γ (γ = +1 where the vote is 0;
// zero entries never agree).
torch::Tensor majority_sign_mask(const torch::Tensor& stacked, SignMethod method);

// TIES disjoint merge: Σ_i m_i τ_i / max(1, Σ_i m_i)  (the mean over agreeing tasks).
torch::Tensor disjoint_merge(const torch::Tensor& stacked, const torch::Tensor& mask);

// Σ_i w_i τ_i with weights [M] broadcast over the trailing dims.
torch::Tensor weighted_sum(const torch::Tensor& stacked, const torch::Tensor& weights);
// weights [M] viewed as [M, 1, ..., 1] to broadcast against `stacked`.
torch::Tensor broadcast_weights(const torch::Tensor& weights, const torch::Tensor& stacked);

}  // namespace modula
