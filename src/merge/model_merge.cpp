// mergekit's merge methods on one tensor: the M models stacked on dim 0, one kernel each.
#include "modula/merge/model_merge.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "modula/merge/task_vectors.h"
#include "modula/util/error.h"

namespace modula {
namespace {

constexpr std::string_view kModelMergeTag = "merge";

bool is_task_arithmetic_family(const std::string& m) {
  return m == "task_arithmetic" || m == "ties" || m == "dare_linear" || m == "dare_ties";
}

torch::Tensor f32(const torch::Tensor& t) { return t.detach().to(torch::kFloat32); }

// Σ w_i θ_i (/ Σ w_i): model soups / mergekit "linear".
torch::Tensor linear(const ModelMergeOptions& o, const torch::Tensor& stacked, const torch::Tensor& w) {
  auto mixed = weighted_sum(stacked, w);
  if (!o.normalized()) return mixed;
  double total = w.sum().item<double>();
  if (std::abs(total) < 1e-8)
    throw_error(kModelMergeTag, "linear: the weights sum to 0; set normalize: false or change the weights");
  return mixed / total;
}

// θ_0 + λ · mix(sparsify(τ_i)) — mergekit's generalized task arithmetic.
torch::Tensor task_arithmetic(const ModelMergeOptions& o, const torch::Tensor& base, const torch::Tensor& stacked,
                              const torch::Tensor& w, const std::vector<double>& densities, at::Generator& gen) {
  const auto& m = o.method();
  auto tau = stacked - base.unsqueeze(0);
  if (m == "ties") tau = magnitude_prune(tau, densities);
  if (m == "dare_linear" || m == "dare_ties") tau = random_prune(tau, densities, o.rescale(), gen);
  auto wb = broadcast_weights(w, tau);
  auto weighted = tau * wb;
  torch::Tensor mixed, divisor;
  if (m == "ties" || m == "dare_ties") {
    // Elect on the weighted task vectors (mergekit), mean over the agreeing weights.
    auto agree = majority_sign_mask(weighted, sign_method_from_string(o.consensus())).to(tau.scalar_type());
    mixed = (weighted * agree).sum(0);
    divisor = (wb * agree).sum(0);
    divisor = torch::where(divisor == 0, torch::ones_like(divisor), divisor);
  } else {
    mixed = weighted.sum(0);
    divisor = w.sum().to(tau.scalar_type());
    if (std::abs(divisor.item<double>()) < 1e-8) divisor = torch::ones_like(divisor);
  }
  if (o.normalized()) mixed = mixed / divisor;
  return base + o.lambda() * mixed;
}

// Spherical interpolation of the flattened tensors; lerp when nearly colinear.
torch::Tensor slerp(const torch::Tensor& v0, const torch::Tensor& v1, double t) {
  constexpr double kDotThreshold = 0.9995, kEps = 1e-8;
  auto unit = [&](const torch::Tensor& v) {
    double n = v.norm().item<double>();
    return n > kEps ? v / n : v;
  };
  double dot = (unit(v0).to(torch::kFloat64) * unit(v1).to(torch::kFloat64)).sum().item<double>();
  if (std::abs(dot) > kDotThreshold) return (1 - t) * v0 + t * v1;
  double omega = std::acos(dot), s = std::sin(omega);
  return (std::sin((1 - t) * omega) / s) * v0 + (std::sin(t * omega) / s) * v1;
}

// Model Stock: t = N cos / (1 + (N−1) cos), cos = mean pairwise cosine of the τ_i.
torch::Tensor model_stock(const ModelMergeOptions& o, const torch::Tensor& base, const torch::Tensor& stacked) {
  const int64_t n = stacked.size(0);
  bool rows = o.filter_wise() && base.dim() >= 2;                            // one t per output row (filter)
  auto b = rows ? base.reshape({base.size(0), -1}) : base.reshape({1, -1});  // [R, D]
  auto w = stacked.reshape({n, b.size(0), b.size(1)});                       // [N, R, D]
  auto tau = w - b.unsqueeze(0);
  auto norms = tau.norm(2, /*dim=*/-1);                   // [N, R]
  auto dots = torch::einsum("ird,jrd->rij", {tau, tau});  // [R, N, N]
  auto cos = (dots / (norms.t().unsqueeze(2) * norms.t().unsqueeze(1)).clamp_min(1e-6)).clamp(-1, 1);
  auto pairs = torch::triu(torch::ones({n, n}, cos.options()), /*diagonal=*/1);  // i < j
  auto mean_cos = (cos * pairs).sum({1, 2}) / pairs.sum();                       // [R]
  auto t = (n * mean_cos / (1 + (n - 1) * mean_cos)).unsqueeze(1);               // [R, 1]
  auto merged = t * w.mean(0) + (1 - t) * b;
  return merged.view(base.sizes());
}

}  // namespace

std::vector<std::string> model_merge_methods() {
  return {"linear", "task_arithmetic", "ties", "dare_linear", "dare_ties", "slerp", "model_stock"};
}

bool method_needs_base(const std::string& method) { return method != "linear"; }

void ModelMergeOptions::validate() const {
  auto methods = model_merge_methods();
  if (std::find(methods.begin(), methods.end(), method()) == methods.end()) {
    std::string known;
    for (const auto& m : methods) known += (known.empty() ? "" : ", ") + m;
    throw_error(kModelMergeTag, "merge_method '" + method() + "' is not known (" + known + ")");
  }
  if (!std::isfinite(lambda())) throw_error(kModelMergeTag, "lambda must be finite");
  if (consensus() != "sum" && consensus() != "count")
    throw_error(kModelMergeTag, "consensus '" + consensus() + "' is not known (sum, count)");
}

bool ModelMergeOptions::normalized() const { return normalize().value_or(method() == "linear" || method() == "ties"); }

torch::Tensor merge_tensor(const ModelMergeOptions& o, const torch::Tensor& base, const std::vector<MergeTerm>& models,
                           double t, at::Generator& gen) {
  o.validate();
  if (models.empty()) throw_error(kModelMergeTag, o.method() + ": no models to merge");
  if (method_needs_base(o.method()) && !base.defined()) throw_error(kModelMergeTag, o.method() + " needs a base_model");
  const auto shape = base.defined() ? base.sizes() : models[0].value.sizes();
  std::vector<torch::Tensor> values;
  std::vector<double> weights, densities;
  for (size_t i = 0; i < models.size(); ++i) {
    if (models[i].value.sizes() != shape)
      throw_error(kModelMergeTag, "model " + std::to_string(i) + " has shape " + c10::str(models[i].value.sizes()) +
                                      ", expected " + c10::str(shape));
    values.push_back(f32(models[i].value));
    weights.push_back(models[i].weight);
    densities.push_back(models[i].density);
  }
  auto stacked = torch::stack(values);
  auto w = torch::tensor(weights, torch::kFloat64);
  const auto& m = o.method();
  if (m == "linear") return linear(o, stacked, w);
  auto b = f32(base);
  if (is_task_arithmetic_family(m)) return task_arithmetic(o, b, stacked, w, densities, gen);
  if (m == "slerp") {
    if (models.size() != 1)
      throw_error(kModelMergeTag,
                  "slerp interpolates the base with exactly one other model, got " + std::to_string(models.size()));
    if (!(t >= 0 && t <= 1)) throw_error(kModelMergeTag, "slerp: t must be in [0, 1], got " + std::to_string(t));
    return slerp(b, stacked[0], t);
  }
  if (models.size() < 2)
    throw_error(kModelMergeTag,
                "model_stock needs at least two models besides the base, got " + std::to_string(models.size()));
  return model_stock(o, b, stacked);
}

}  // namespace modula
