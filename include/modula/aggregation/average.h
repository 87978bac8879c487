// Weighted average of the children's outputs (AdapterHub's Average; weight-space
// averaging's function-space counterpart):
//
//   y ← Σ_c w̄_c c(x, y) = y + Σ_c w̄_c d_c(x, y),   w̄_c = w_c / Σ_c' w_c'
#pragma once

#include "modula/aggregation/composite.h"

namespace modula {

class AverageImpl : public CompositeImpl {
 public:
  // Throws std::invalid_argument if the weights do not match the children one to one,
  // are not finite, or sum to zero. normalize false: the weights are w̄ already (a
  // subset of a normalised set, for members absent at a site).
  AverageImpl(std::vector<std::shared_ptr<SiteModule>> children, std::vector<double> weights, bool normalize = true);
  torch::Tensor transform_block(const torch::Tensor& x, const torch::Tensor& y) override;

  const std::vector<double>& normalized_weights() const { return weights_; }

 private:
  std::vector<double> weights_;  // w̄, sums to 1
};
TORCH_MODULE(Average);

}  // namespace modula
