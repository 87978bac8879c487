// TIES trim/elect/disjoint-merge and DARE drop-and-rescale, batched over stacked tasks.
#include "modula/aggregation/task_vectors.h"

#include <ATen/CPUGeneratorImpl.h>

#include <stdexcept>

namespace modula {

SignMethod sign_method_from_string(const std::string& name) {
  if (name == "total" || name == "sum") return SignMethod::Total;
  if (name == "frequency" || name == "count") return SignMethod::Frequency;
  throw std::invalid_argument("[merge] majority_sign_method '" + name +
                              "' is not known (total/sum or frequency/count)");
}

torch::Tensor magnitude_prune(const torch::Tensor& stacked, double density) {
  if (density < 0) throw std::invalid_argument("[merge] density must be >= 0, got " + std::to_string(density));
  if (density >= 1) return stacked;
  auto flat = stacked.reshape({stacked.size(0), -1});
  auto k = static_cast<int64_t>(density * static_cast<double>(flat.size(1)));  // ⌊density·n⌋ as PEFT's int()
  auto mask = torch::zeros_like(flat);
  if (k > 0) mask.scatter_(1, std::get<1>(flat.abs().topk(k, /*dim=*/1)), 1.0);
  return (flat * mask).view(stacked.sizes());
}

at::Generator seeded_generator(uint64_t seed) { return at::make_generator<at::CPUGeneratorImpl>(seed); }

torch::Tensor random_prune(const torch::Tensor& stacked, double density, bool rescale, at::Generator& gen) {
  if (density < 0) throw std::invalid_argument("[merge] density must be >= 0, got " + std::to_string(density));
  if (density >= 1) return stacked;
  auto p = torch::full(stacked.sizes(), density, torch::TensorOptions().dtype(torch::kFloat32));
  auto mask = torch::bernoulli(p, gen).to(stacked.device(), stacked.scalar_type());
  auto kept = stacked * mask;
  return rescale ? kept / density : kept;  // DARE: θ̃ = m ⊙ τ / p
}

torch::Tensor majority_sign_mask(const torch::Tensor& stacked, SignMethod method) {
  auto sign = stacked.sign();
  auto vote = method == SignMethod::Total ? stacked.sum(0) : sign.sum(0);
  auto elected = torch::where(vote >= 0, torch::ones_like(vote), -torch::ones_like(vote));
  return sign == elected;
}

torch::Tensor disjoint_merge(const torch::Tensor& stacked, const torch::Tensor& mask) {
  auto m = mask.to(stacked.scalar_type());
  return (stacked * m).sum(0) / m.sum(0).clamp_min(1.0);
}

torch::Tensor broadcast_weights(const torch::Tensor& weights, const torch::Tensor& stacked) {
  if (weights.dim() != 1 || weights.size(0) != stacked.size(0))
    throw std::invalid_argument("[merge] " + std::to_string(weights.numel()) + " weights for " +
                                std::to_string(stacked.size(0)) + " task tensors");
  std::vector<int64_t> shape(stacked.dim(), 1);
  shape[0] = weights.size(0);
  return weights.to(stacked.device(), stacked.scalar_type()).view(shape);
}

torch::Tensor weighted_sum(const torch::Tensor& stacked, const torch::Tensor& weights) {
  return (stacked * broadcast_weights(weights, stacked)).sum(0);
}

}  // namespace modula
