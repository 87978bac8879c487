// Classification and language-modelling metrics over flattened predictions.
#include "modula/train/metrics.h"

#include <cmath>
#include <limits>

namespace modula::train {

double accuracy(const torch::Tensor& pred, const torch::Tensor& target, int64_t ignore_index) {
  auto keep = target.ne(ignore_index);
  auto n = keep.sum().item<int64_t>();
  if (n == 0) return std::numeric_limits<double>::quiet_NaN();
  return (pred.eq(target) & keep).sum().item<double>() / static_cast<double>(n);
}

double macro_f1(const torch::Tensor& pred, const torch::Tensor& target, int64_t num_classes, int64_t ignore_index) {
  auto keep = target.ne(ignore_index);
  auto p = pred.masked_select(keep).to(torch::kInt64), t = target.masked_select(keep).to(torch::kInt64);
  if (t.numel() == 0) return std::numeric_limits<double>::quiet_NaN();
  // Confusion counts per class with one bincount each: tp, predicted, actual.
  auto tp = torch::bincount(t.masked_select(p.eq(t)), {}, num_classes).to(torch::kFloat64);
  auto predicted = torch::bincount(p.clamp(0, num_classes - 1), {}, num_classes).to(torch::kFloat64);
  auto actual = torch::bincount(t, {}, num_classes).to(torch::kFloat64);
  auto present = (predicted + actual) > 0;
  // F1 = 2·tp / (predicted + actual), the harmonic mean of precision and recall.
  auto f1 = torch::where(present, 2 * tp / (predicted + actual).clamp_min(1), torch::zeros_like(tp));
  return (f1.sum() / present.sum()).item<double>();
}

double perplexity(double total_nll, int64_t tokens) {
  if (tokens == 0) return std::numeric_limits<double>::quiet_NaN();
  return std::exp(total_nll / static_cast<double>(tokens));
}

}  // namespace modula::train
