// TIES trim/elect/disjoint-merge and DARE drop-and-rescale, batched over stacked tasks.
#include "modula/merge/task_vectors.h"

#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <stdexcept>

#include "modula/util/error.h"

namespace modula {

SignMethod sign_method_from_string(const std::string& name) {
  if (name == "total" || name == "sum") return SignMethod::Total;
  if (name == "frequency" || name == "count") return SignMethod::Frequency;
  throw_error("merge", "majority_sign_method '" + name + "' is not known (total/sum or frequency/count)");
}

namespace {

void check_densities(const torch::Tensor& stacked, const std::vector<double>& densities) {
  if (static_cast<int64_t>(densities.size()) != stacked.size(0))
    throw_error("merge", std::to_string(densities.size()) + " densities for " + std::to_string(stacked.size(0)) +
                             " task tensors");
  for (double d : densities)
    if (!(d >= 0)) throw_error("merge", "density must be >= 0, got " + std::to_string(d));
}

}  // namespace

torch::Tensor magnitude_prune(const torch::Tensor& stacked, double density) {
  return magnitude_prune(stacked, std::vector<double>(stacked.size(0), density));
}

torch::Tensor magnitude_prune(const torch::Tensor& stacked, const std::vector<double>& densities) {
  check_densities(stacked, densities);
  auto flat = stacked.reshape({stacked.size(0), -1});
  const int64_t n = flat.size(1);
  std::vector<int64_t> k;  // ⌊density·n⌋ per task, as PEFT's / mergekit's int()
  for (double d : densities) k.push_back(d >= 1 ? n : static_cast<int64_t>(d * static_cast<double>(n)));
  int64_t k_max = *std::max_element(k.begin(), k.end());
  if (k_max == n && *std::min_element(k.begin(), k.end()) == n) return stacked;
  auto mask = torch::zeros_like(flat);
  if (k_max > 0) {
    auto order = std::get<1>(flat.abs().topk(k_max, /*dim=*/1));  // largest |τ| first
    auto rank = torch::arange(k_max, order.options()).unsqueeze(0);
    auto keep = (rank < torch::tensor(k, order.options()).unsqueeze(1)).to(flat.scalar_type());
    mask.scatter_(1, order, keep);
  }
  return (flat * mask).view(stacked.sizes());
}

at::Generator seeded_generator(uint64_t seed) { return at::make_generator<at::CPUGeneratorImpl>(seed); }

torch::Tensor random_prune(const torch::Tensor& stacked, double density, bool rescale, at::Generator& gen) {
  return random_prune(stacked, std::vector<double>(stacked.size(0), density), rescale, gen);
}

torch::Tensor random_prune(const torch::Tensor& stacked, const std::vector<double>& densities, bool rescale,
                           at::Generator& gen) {
  check_densities(stacked, densities);
  if (*std::min_element(densities.begin(), densities.end()) >= 1) return stacked;
  std::vector<double> p;
  for (double d : densities) p.push_back(std::min(d, 1.0));
  std::vector<int64_t> row(stacked.dim(), 1);
  row[0] = stacked.size(0);
  auto prob = torch::tensor(p, torch::kFloat32).view(row).expand(stacked.sizes()).contiguous();
  auto mask = torch::bernoulli(prob, gen).to(stacked.device(), stacked.scalar_type());
  auto kept = stacked * mask;
  if (!rescale) return kept;
  // DARE: τ̃ = m ⊙ τ / p (p = 0 keeps nothing, so nothing to rescale)
  auto divisor =
      torch::tensor(p, torch::kFloat64).clamp_min(1e-12).view(row).to(stacked.device(), stacked.scalar_type());
  return kept / divisor;
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
    throw_error("merge",
                std::to_string(weights.numel()) + " weights for " + std::to_string(stacked.size(0)) + " task tensors");
  std::vector<int64_t> shape(stacked.dim(), 1);
  shape[0] = weights.size(0);
  return weights.to(stacked.device(), stacked.scalar_type()).view(shape);
}

torch::Tensor weighted_sum(const torch::Tensor& stacked, const torch::Tensor& weights) {
  return (stacked * broadcast_weights(weights, stacked)).sum(0);
}

}  // namespace modula
