// The one place where libtorch 1.13 (Debian, CPU) and libtorch 2.x (CUDA) differ.
#pragma once

#include <torch/torch.h>
#include <torch/version.h>

#if defined(TORCH_VERSION_MAJOR) && TORCH_VERSION_MAJOR >= 2
#define MODULA_TORCH2 1
#else
#define MODULA_TORCH2 0
#endif

namespace modula::compat {

// softmax(q k^T * scale + mask) v. q [B,H,Tq,D], k/v [B,H,Tk,D], mask additive
// [B,1|H,Tq,Tk] (0 or -inf-like) or undefined. torch 2 has a fused kernel; 1.13 does not.
inline torch::Tensor attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                               const torch::Tensor& mask, double scale) {
#if MODULA_TORCH2
  return at::scaled_dot_product_attention(q, k, v, mask.defined() ? c10::optional<at::Tensor>(mask) : c10::nullopt,
                                          0.0, false, scale);
#else
  auto scores = torch::matmul(q, k.transpose(-2, -1)) * scale;
  if (mask.defined()) scores = scores + mask;
  return torch::matmul(torch::softmax(scores, -1, scores.scalar_type()), v);
#endif
}

}  // namespace modula::compat
