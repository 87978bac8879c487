// (IA)³ (Liu et al. 2022): learned rescaling vectors, PEFT semantics.
//   attention/output sites: y = (W x + b) ⊙ l         ia3_l [out, 1]
//   feed-forward sites:     y = W (x ⊙ l) + b         ia3_l [1, in]
// Init l = 1 (identity).
//
//   site->attach("default", Ia3(Ia3Options(64, 64).feedforward(true)).ptr());
#pragma once

#include "modula/backbone/layers.h"

namespace modula {

struct Ia3Options {
  Ia3Options(int64_t in, int64_t out) : in_features_(in), out_features_(out) {}
  TORCH_ARG(int64_t, in_features);
  TORCH_ARG(int64_t, out_features);
  TORCH_ARG(bool, feedforward) = false;
};

class Ia3Impl : public SiteModule {
 public:
  explicit Ia3Impl(const Ia3Options& options);
  void reset();
  torch::Tensor transform_input(const torch::Tensor& x) override;
  bool transforms_input() const override { return options.feedforward(); }
  torch::Tensor transform_output(const torch::Tensor& x, const torch::Tensor& y, const LinearImpl& base) override;
  void merge(LinearImpl& base) override;
  void unmerge(LinearImpl& base) override;

  Ia3Options options;
  torch::Tensor ia3_l;

 private:
  torch::Tensor scaled_l() const;
};
TORCH_MODULE(Ia3);

}  // namespace modula
