// The LoRA bank's kernels for one module per row without autograd: every row reads its
// module straight from the bank instead of a gathered copy (BGMV, Punica: Chen et al. 2023).
// Internal to modula_composition.

#pragma once

#include <torch/torch.h>

namespace modula::detail {

// y[n] = w[n] s_m B_m (A_m x[n]) with m = ids[n] (-1: y[n] = 0). x [N, 1, in], A [M, r, in],
// B [M, out, r], scaling [M], ids [N] int64, w [N]; float32 on the CPU, contiguous.
// Returns [N, 1, out]; throws naming a row whose id is out of range.
torch::Tensor lora_bgmv(const torch::Tensor& x, const torch::Tensor& A, const torch::Tensor& B,
                        const torch::Tensor& scaling, const torch::Tensor& ids, const torch::Tensor& w);

// Longer rows on the CPU: y[n] = c[n] x[n] A_mᵀ B_mᵀ for x [N, T, in], m = ids[n] (-1: zeros),
// c [N] the rows' scale (routing weight × s_m): two GEMMs per row on the bank's own A_m and
// B_m, rows spread over the intra-op threads. Against gathering A and B per row into one
// bmm: no copies of the modules, and the GEMMs run side by side instead of one after
// another (16 x 64 tokens, r 64, 512 x 512 on 2 cores: 1.28-1.33 ms against 1.40-1.46).
// Grouping rows by module first (one GEMM per module, OpenBLAS threading each) was slower:
// 1.7 ms.
torch::Tensor lora_row_gemms(const torch::Tensor& x, const torch::Tensor& A, const torch::Tensor& B,
                             const torch::Tensor& c, const torch::Tensor& ids);

}  // namespace modula::detail
