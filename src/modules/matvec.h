// The mat-vec and GEMM primitives of the CPU kernels (lora_kernels.h): module weights stored as
// float32, as bfloat16 bits (widened to float as they are read) or as int8 with one scale
// per matrix row (W[o, i] = scale[o] · q[o, i]), activations float32.
// An AVX2/FMA path picked at run time (MODULA_KERNELS=portable: never), a portable loop
// otherwise. Internal to modula.
#pragma once

#include <cstdint>

namespace modula::detail {

// y[o] = Σ_i W[o, i] x[i] for W [out, in] row-major.
void matvec(const float* W, const float* x, float* y, int64_t out, int64_t in);
void matvec(const uint16_t* W, const float* x, float* y, int64_t out, int64_t in);
void matvec(const int8_t* W, const float* row_scale, const float* x, float* y, int64_t out, int64_t in);

// One LoRA row: y = y0 + B (c A x) for A [r, in], B [out, r] (y0 null: 0; y0 must not alias y); h: r floats of
// scratch. Both matrices are streamed once, front to back.
void bgmv_row(const float* A, const float* B, const float* x, float c, float* h, const float* y0, float* y, int64_t r,
              int64_t in, int64_t out);
void bgmv_row(const uint16_t* A, const uint16_t* B, const float* x, float c, float* h, const float* y0, float* y,
              int64_t r, int64_t in, int64_t out);
// int8 A and B with their row scales sA [r], sB [out].
void bgmv_row(const int8_t* A, const float* sA, const int8_t* B, const float* sB, const float* x, float c, float* h,
              float* y, int64_t r, int64_t in, int64_t out);

// C[m, n] = c · s[n] · Σ_k X[m, k] W[n, k]: X [M, K] with row stride ldx, W [N, K] row-major
// (float32, bfloat16 bits or int8), C [M, N] with row stride ldc, s [N] the int8 rows' scales
// (null: 1). One thread; 16 rows of W at a time packed (widened, scaled) into a panel that
// tiles of 6 rows of X read. C must not overlap X.
void gemm_nt(const float* X, int64_t ldx, const float* W, const float* s, float c, float* C, int64_t ldc, int64_t M,
             int64_t N, int64_t K);
void gemm_nt(const float* X, int64_t ldx, const uint16_t* W, const float* s, float c, float* C, int64_t ldc, int64_t M,
             int64_t N, int64_t K);
void gemm_nt(const float* X, int64_t ldx, const int8_t* W, const float* s, float c, float* C, int64_t ldc, int64_t M,
             int64_t N, int64_t K);

// dst[i] = src[i] widened from bfloat16 bits to float.
void widen_bf16(const uint16_t* src, float* dst, int64_t n);

}  // namespace modula::detail
