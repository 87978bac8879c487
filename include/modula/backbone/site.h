// A site is a place in the backbone where modules attach. Linear sites (every
// projection, named by its HF path such as "model.layers.0.self_attn.q_proj") accept
// SiteModules: computation functions that transform the layer's input and/or output.
//
//   y = W · in(x) + b,  then  y ← out(x, y)  for each attached, enabled, unmerged module
//
// LoRA adds B·A·x to y, (IA)³ scales y (or x for feed-forward layers), DoRA rescales.
#pragma once

#include <torch/torch.h>

namespace modula {

class LinearImpl;

class SiteModule : public torch::nn::Module {
 public:
  // Applied to the layer input before the base weight (default: identity).
  virtual torch::Tensor transform_input(const torch::Tensor& x) { return x; }
  // Returns the new layer output given the original input x [..,in] and output y [..,out].
  virtual torch::Tensor transform_output(const torch::Tensor& x, const torch::Tensor& y, const LinearImpl& base) {
    return y;
  }
  // Folds the module into the base weights / restores them (merge then unmerge restores
  // the base weights to float rounding).
  virtual void merge(LinearImpl& base) = 0;
  virtual void unmerge(LinearImpl& base) = 0;
  // Parameter count of the module (what training updates).
  int64_t num_trainable() const {
    int64_t n = 0;
    for (const auto& p : parameters()) n += p.numel();
    return n;
  }

  bool enabled = true;  // off: the site behaves as if the module were absent
  double scale = 1.0;   // strength: LoRA scales its delta, (IA)³ interpolates 1 + scale·(l − 1)
  bool merged = false;  // folded into the base weights: skipped in forward
};

}  // namespace modula
