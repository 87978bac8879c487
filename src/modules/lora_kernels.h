// LoRA kernels (and the gathered mat-vec that other banks share) without autograd on the
// CPU. For a bank, one module per row: every row reads its module straight from the bank
// instead of a gathered copy (BGMV, Punica: Chen et al. 2023). For one module, a few rows (batch-1 decode): the delta
// and the add in one pass. Internal to modula (modula_modules, modula_composition).

#pragma once

#include <torch/torch.h>

namespace modula::detail {

// Whether every tensor is float32 on the CPU (what the kernels take as activations).
bool cpu_float32(std::initializer_list<torch::Tensor> ts);

// Whether the kernels read t as module weights: on the CPU, float32, bfloat16 or int8
// (widened to float32 as it is read; activations stay float32).
bool kernel_weights(const torch::Tensor& t);

// A bank's weights as the kernels read them: A [M, r, in], B [M, out, r] in one dtype
// (kernel_weights); for int8 also the row scales A_scale [M, r], B_scale [M, out] (float32,
// W[m, o, i] = scale[m, o] · q[m, o, i]), undefined otherwise. Contiguous.
struct BankWeights {
  torch::Tensor A, B, A_scale, B_scale;
};

// y[n] = w[n] s_m B_m (A_m x[n]) with m = ids[n] (-1: y[n] = 0). x [N, 1, in], scaling [M],
// ids [N] int64, w [N]; float32 on the CPU, contiguous. Rows spread over ATen's threads.
// Returns [N, 1, out]; throws naming a row whose id is out of range.
torch::Tensor lora_bgmv(const torch::Tensor& x, const BankWeights& bank, const torch::Tensor& scaling,
                        const torch::Tensor& ids, const torch::Tensor& w);

// The BGMV primitive: y[n] = W_m x[n] with m = ids[n] (−1: zeros) for W [M, out, in]
// (float32 or bfloat16), x [N, in] float32 on the CPU, ids [N]; each row reads its matrix
// straight from W. Returns [N, out]; throws naming a row whose id is out of range.
torch::Tensor gathered_matvec(const torch::Tensor& W, const torch::Tensor& x, const torch::Tensor& ids);

// Longer rows on the CPU: y[n] = c[n] x[n] A_mᵀ B_mᵀ for x [N, T, in], m = ids[n] (-1: zeros),
// c [N] the rows' scale (routing weight × s_m). Float32 x: two GEMMs of our own per row
// (gemm_nt, matvec.h) on the bank's own A_m and B_m as stored (bf16 and int8 widened, int8
// scaled, as they are packed), in blocks of up to 64 tokens spread over ATen's threads (this
// file is compiled with OpenMP; the GEMMs call no BLAS, so no thread pool contends with
// OpenBLAS's). lora_only 16 x 64, r 64, 512 x 512, 2 threads: 0.92-1.25 ms against
// 1.92-2.18 for two OpenBLAS GEMMs per row one row after another (bf16 and int8 banks 0.83-1.15
// against 2.33-2.84: no dequantized copy per row); one adapter's two OpenBLAS GEMMs over all
// 1024 tokens 0.90-1.45. Other dtypes (bf16 activations): two torch GEMMs per row on the
// module converted to x's dtype.
// Earlier, measured and dropped: gathering A and B per row into one bmm (copies of the
// modules), grouping rows by module (1.7 ms against 1.3), rows over OpenMP threads each
// calling OpenBLAS (slower: the OpenMP threads contended with OpenBLAS's).
torch::Tensor lora_row_gemms(const torch::Tensor& x, const BankWeights& bank, const torch::Tensor& c,
                             const torch::Tensor& ids);

// y + c · B (A x) for x [.., in] with a few rows, A [r, in], B [out, r] (float32 or bfloat16, one
// dtype), y [.., out]; x, y float32 on the CPU. One call where the plain path is two linears, a scale and an add, each
// an operator dispatch and a temporary: at batch-1 decode the LoRA's 28 sites cost more in dispatch than in arithmetic.
torch::Tensor lora_add_rows(const torch::Tensor& x, const torch::Tensor& A, const torch::Tensor& B, double c,
                            const torch::Tensor& y);

}  // namespace modula::detail
