// The one place where libtorch 1.13 (Debian, CPU) and libtorch 2.x (CUDA) differ.
#pragma once

#include <ATen/autocast_mode.h>
#include <torch/torch.h>
#include <torch/version.h>

#if defined(TORCH_VERSION_MAJOR) && TORCH_VERSION_MAJOR >= 2
#define MODULA_TORCH2 1
#else
#define MODULA_TORCH2 0
#endif

namespace modula::compat {

// CUDA autocast on/off with the given compute dtype (training in bf16). torch >= 2.4 keys
// autocast by device type; older versions have one CUDA switch.
inline void set_cuda_autocast(bool on, at::ScalarType dtype = at::kBFloat16) {
#if defined(TORCH_VERSION_MAJOR) && (TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4))
  at::autocast::set_autocast_dtype(at::kCUDA, dtype);
  at::autocast::set_autocast_enabled(at::kCUDA, on);
#else
  at::autocast::set_autocast_gpu_dtype(dtype);
  at::autocast::set_enabled(on);
#endif
  if (!on) at::autocast::clear_cache();
}

// softmax(q k^T * scale + mask) v. q [B,H,Tq,D], k/v [B,H,Tk,D], mask additive
// [B,1|H,Tq,Tk] (0 or -inf-like) or undefined. torch 2 has a fused kernel; 1.13 does not.
inline torch::Tensor attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                               const torch::Tensor& mask, double scale) {
#if MODULA_TORCH2
  return at::scaled_dot_product_attention(q, k, v, mask.defined() ? c10::optional<at::Tensor>(mask) : c10::nullopt, 0.0,
                                          false, scale);
#else
  auto scores = torch::matmul(q, k.transpose(-2, -1)) * scale;
  if (mask.defined()) scores = scores + mask;
  return torch::matmul(torch::softmax(scores, -1, scores.scalar_type()), v);
#endif
}

}  // namespace modula::compat
