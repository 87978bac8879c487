// LoRA (Hu et al. 2022) with PEFT semantics, rsLoRA (Kalajdzievski 2023) and DoRA
// (Liu et al. 2024), as a SiteModule on a Linear site.
//
//   y = W x + b + s · B A dropout(x),   s = alpha / r   (rsLoRA: alpha / sqrt(r))
//   DoRA: y = m ⊙ (W + s B A) x / ||W + s B A||_row + b
//
// Shapes: lora_A [r, in], lora_B [out, r], lora_magnitude_vector [out] (DoRA).
//
//   auto lora = Lora(LoraOptions(64, 64).r(8).alpha(16));
//   site->attach("default", lora.ptr());
#pragma once

#include "modula/backbone/layers.h"

namespace modula {

struct LoraOptions {
  LoraOptions(int64_t in, int64_t out) : in_features_(in), out_features_(out) {}
  TORCH_ARG(int64_t, in_features);
  TORCH_ARG(int64_t, out_features);
  TORCH_ARG(int64_t, r) = 8;
  TORCH_ARG(double, alpha) = 8.0;
  TORCH_ARG(double, dropout) = 0.0;
  TORCH_ARG(bool, use_rslora) = false;
  TORCH_ARG(bool, use_dora) = false;

 public:  // TORCH_ARG leaves the section private
  // Throws std::invalid_argument naming the bad field.
  void validate() const;
  double scaling() const;
};

class LoraImpl : public SiteModule {
 public:
  explicit LoraImpl(const LoraOptions& options);
  // PEFT init: A ~ kaiming-uniform(a=sqrt(5)), B = 0, so the module starts as identity.
  void reset();
  // DoRA needs the base weight to initialise m = ||W||_row.
  void init_dora_magnitude(const LinearImpl& base);

  torch::Tensor transform_output(const torch::Tensor& x, const torch::Tensor& y, const LinearImpl& base) override;
  void merge(LinearImpl& base) override;
  void unmerge(LinearImpl& base) override;
  // s · B A, [out, in].
  torch::Tensor delta_weight() const;

  LoraOptions options;
  torch::Tensor lora_A, lora_B, lora_magnitude_vector;

 private:
  torch::Tensor dora_weight_norm(const LinearImpl& base) const;  // ||W + s B A||_row, detached
  torch::Tensor merged_norm_;                                    // DoRA: the norm used when merging
};
TORCH_MODULE(Lora);

}  // namespace modula
