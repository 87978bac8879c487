#include "modula/aggregation/average.h"

#include <cmath>
#include <stdexcept>

#include "modula/util/error.h"

namespace modula {

AverageImpl::AverageImpl(std::vector<std::shared_ptr<SiteModule>> children, std::vector<double> weights, bool normalize)
    : CompositeImpl("avg", std::move(children)) {
  if (weights.size() != this->children().size())
    throw_error(
        "avg", std::to_string(weights.size()) + " weights for " + std::to_string(this->children().size()) + " modules");
  double sum = 0;
  for (size_t i = 0; i < weights.size(); ++i) {
    if (!std::isfinite(weights[i])) throw_error("avg", "weight " + std::to_string(i) + " is not finite");
    sum += weights[i];
  }
  if (!normalize) {
    weights_ = std::move(weights);
    return;
  }
  if (sum == 0) throw_error("avg", "weights sum to zero; they cannot be normalised");
  for (auto& w : weights) w /= sum;
  weights_ = std::move(weights);
}

// y + Σ_c w̄_c d_c
torch::Tensor AverageImpl::transform_block(const torch::Tensor& x, const torch::Tensor& y) {
  auto d = contributions(x, y);  // [.., C, H]
  auto w = torch::tensor(weights_, torch::kFloat64).to(d.device(), d.scalar_type());
  return y + torch::einsum("...ch,c->...h", {d, w});
}

}  // namespace modula
