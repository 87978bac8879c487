// The LoRA bank's decode kernel: one token per row, each row its own module, read straight
// from the bank (BGMV, Punica: Chen et al. 2023). Internal to modula_composition.
// (For longer rows an SGMV here, rows grouped by module through two GEMMs per module on the
// bank's own A_m and B_m, was slower on the CPU than the gathered bmm: 1.7 vs 1.4 ms at
// 16 x 64 tokens, r 64, 512 x 512; OpenBLAS runs 16 small GEMMs less well than one batch.)
#pragma once

#include <torch/torch.h>

namespace modula::detail {

// y[n] = w[n] s_m B_m (A_m x[n]) with m = ids[n] (-1: y[n] = 0). x [N, 1, in], A [M, r, in],
// B [M, out, r], scaling [M], ids [N] int64, w [N]; float32 on the CPU, contiguous.
// Returns [N, 1, out]; throws naming a row whose id is out of range.
torch::Tensor lora_bgmv(const torch::Tensor& x, const torch::Tensor& A, const torch::Tensor& B,
                        const torch::Tensor& scaling, const torch::Tensor& ids, const torch::Tensor& w);

}  // namespace modula::detail
