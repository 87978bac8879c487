// The mat-vec primitives of the CPU kernels (lora_kernels.h): module weights stored as
// float32, as bfloat16 bits (widened to float as they are read) or as int8 with one scale
// per matrix row (W[o, i] = scale[o] · q[o, i]), activations float32.
// An AVX2/FMA path picked at run time, a portable loop otherwise. Internal to modula.
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

// dst[i] = src[i] widened from bfloat16 bits to float.
void widen_bf16(const uint16_t* src, float* dst, int64_t n);

}  // namespace modula::detail
