#include "modules/matvec.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#define MODULA_HAS_AVX2_PATH 1
#endif

namespace modula::detail {
namespace {

// bfloat16 is the high half of a float's bits.
inline float widen(float v) { return v; }
inline float widen(int8_t q) { return static_cast<float>(q); }
inline float widen(uint16_t bf16) {
  const uint32_t bits = static_cast<uint32_t>(bf16) << 16;
  float v;
  std::memcpy(&v, &bits, sizeof v);
  return v;
}

// Portable: Σ_i a[i] b[i] in 16 independent partial sums (vectorizable without reassociation).
template <typename W>
float dot(const W* a, const float* b, int64_t n) {
  float part[16] = {};
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    for (int j = 0; j < 16; ++j) part[j] += widen(a[i + j]) * b[i + j];
  float sum = 0;
  for (; i < n; ++i) sum += widen(a[i]) * b[i];
  for (float p : part) sum += p;
  return sum;
}

template <typename W>
void matvec_portable(const W* w, const float* x, float* y, int64_t out, int64_t in) {
  for (int64_t o = 0; o < out; ++o) y[o] = dot(w + o * in, x, in);
}

[[maybe_unused]] bool portable_requested() {
  const char* v = std::getenv("MODULA_KERNELS");
  return v && std::string(v) == "portable";
}

template <typename W>
void gemm_nt_portable(const float* X, int64_t ldx, const W* w, const float* s, float c, float* C, int64_t ldc,
                      int64_t M, int64_t N, int64_t K) {
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) C[m * ldc + n] = c * (s ? s[n] : 1.0f) * dot(w + n * K, X + m * ldx, K);
}

#ifdef MODULA_HAS_AVX2_PATH
#define MODULA_AVX2 __attribute__((target("avx2,fma")))

MODULA_AVX2 inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
MODULA_AVX2 inline __m256 load8(const uint16_t* p) {  // 8 bf16 -> 8 floats: zero-extend, shift into the high half
  const __m128i bits = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(bits), 16));
}
MODULA_AVX2 inline __m256 load8(const int8_t* p) {  // 8 int8 -> 8 floats: sign-extend, convert
  const __m128i bits = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bits));
}

// Two 8-lane FMA chains. GCC's vectorization of the portable loop over bf16 weights ran at
// 18 GB/s cold and 12-14 us per LoRA adapter (r 64, 512 -> 1376) hot; this at 24-25 GB/s
// and 6 us (float weights: 26 GB/s, 6-7 us).
template <typename W>
MODULA_AVX2 inline float dot_avx2(const W* a, const float* b, int64_t n) {
  __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    s0 = _mm256_fmadd_ps(load8(a + i), _mm256_loadu_ps(b + i), s0);
    s1 = _mm256_fmadd_ps(load8(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
  }
  const __m256 s = _mm256_add_ps(s0, s1);
  __m128 q = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
  q = _mm_add_ps(q, _mm_movehl_ps(q, q));
  q = _mm_add_ss(q, _mm_movehdup_ps(q));
  float sum = _mm_cvtss_f32(q);
  for (; i < n; ++i) sum += widen(a[i]) * b[i];
  return sum;
}

template <typename W>
MODULA_AVX2 void matvec_avx2(const W* w, const float* x, float* y, int64_t out, int64_t in) {
  for (int64_t o = 0; o < out; ++o) y[o] = dot_avx2(w + o * in, x, in);
}

// The GEMM below packs 16 rows of W at a time, transposed, widened and scaled: panel[k][j] =
// s[n0 + j] · W[n0 + j, k] (zeros past N), one panel in L1 (K = 512: 32 KB) for every row of X.
constexpr int64_t kPanel = 16;

// Columns k0..K of the panel of rows n0..n0+16 (rows past N: zeros).
template <typename W>
void pack_panel(const W* w, const float* s, int64_t n0, int64_t N, int64_t k0, int64_t K, float* panel) {
  for (int64_t j = 0; j < kPanel; ++j) {
    const int64_t n = n0 + j;
    const float sn = n < N && s ? s[n] : 1.0f;
    for (int64_t k = k0; k < K; ++k) panel[k * kPanel + j] = n < N ? sn * widen(w[n * K + k]) : 0.0f;
  }
}

// C[i, 0:16] = c · Σ_k X[i, k] panel[k, 0:16] for MR rows of X: MR x 2 eight-lane FMA chains,
// each X value broadcast once and used 16 times (6 x 16: 12 accumulators, 2 panel and 1
// broadcast register of AVX2's 16). cols < 16: only those columns of C are written.
template <int MR>
MODULA_AVX2 void panel_tile(const float* X, int64_t ldx, const float* panel, int64_t K, float c, float* C, int64_t ldc,
                            int64_t cols) {
  __m256 acc[MR][2];  // the unroll pragmas keep it in registers (without: stored every k, 52 against 100 GFLOP/s)
#pragma GCC unroll 6
  for (int i = 0; i < MR; ++i) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
  for (int64_t k = 0; k < K; ++k) {
    const __m256 b0 = _mm256_loadu_ps(panel + k * kPanel), b1 = _mm256_loadu_ps(panel + k * kPanel + 8);
#pragma GCC unroll 6
    for (int i = 0; i < MR; ++i) {
      const __m256 a = _mm256_broadcast_ss(X + i * ldx + k);
      acc[i][0] = _mm256_fmadd_ps(a, b0, acc[i][0]);
      acc[i][1] = _mm256_fmadd_ps(a, b1, acc[i][1]);
    }
  }
  const __m256 cv = _mm256_set1_ps(c);
#pragma GCC unroll 6
  for (int i = 0; i < MR; ++i) {
    float* Ci = C + i * ldc;
    if (cols == kPanel) {
      _mm256_storeu_ps(Ci, _mm256_mul_ps(cv, acc[i][0]));
      _mm256_storeu_ps(Ci + 8, _mm256_mul_ps(cv, acc[i][1]));
    } else {
      alignas(32) float row[kPanel];
      _mm256_store_ps(row, _mm256_mul_ps(cv, acc[i][0]));
      _mm256_store_ps(row + 8, _mm256_mul_ps(cv, acc[i][1]));
      std::copy_n(row, cols, Ci);
    }
  }
}

// r[i][j] <- r[j][i] for eight 8-lane rows.
MODULA_AVX2 inline void transpose8(__m256* r) {
  __m256 t[8], u[8];
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 8; i += 4) {
    u[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
    u[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
    u[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
    u[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
  }
  for (int i = 0; i < 4; ++i) {
    r[i] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x20);
    r[i + 4] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x31);
  }
}

// pack_panel for a whole panel (n0 + 16 <= N): 8 x 8 blocks widened, scaled and transposed in
// registers (the scalar loop took a fifth of the GEMM's time at K = 512, M = 64).
template <typename W>
MODULA_AVX2 void pack_panel_avx2(const W* w, const float* s, int64_t n0, int64_t K, float* panel) {
  int64_t k0 = 0;
  for (; k0 + 8 <= K; k0 += 8)
    for (int64_t j0 = 0; j0 < kPanel; j0 += 8) {
      __m256 r[8];
#pragma GCC unroll 8
      for (int j = 0; j < 8; ++j) {
        const int64_t n = n0 + j0 + j;
        r[j] = load8(w + n * K + k0);
        if (s) r[j] = _mm256_mul_ps(r[j], _mm256_set1_ps(s[n]));
      }
      transpose8(r);
#pragma GCC unroll 8
      for (int i = 0; i < 8; ++i) _mm256_storeu_ps(panel + (k0 + i) * kPanel + j0, r[i]);
    }
  pack_panel(w, s, n0, n0 + kPanel, k0, K, panel);  // the last K % 8 columns
}

template <typename W>
MODULA_AVX2 void gemm_nt_avx2(const float* X, int64_t ldx, const W* w, const float* s, float c, float* C, int64_t ldc,
                              int64_t M, int64_t N, int64_t K) {
  using Tile = void (*)(const float*, int64_t, const float*, int64_t, float, float*, int64_t, int64_t);
  static constexpr Tile edge[6] = {panel_tile<1>, panel_tile<2>, panel_tile<3>,
                                   panel_tile<4>, panel_tile<5>, panel_tile<6>};
  thread_local std::vector<float> panel;
  panel.resize(static_cast<size_t>(K * kPanel));
  for (int64_t n0 = 0; n0 < N; n0 += kPanel) {
    const int64_t cols = std::min(kPanel, N - n0);
    if (cols == kPanel)
      pack_panel_avx2(w, s, n0, K, panel.data());
    else
      pack_panel(w, s, n0, N, 0, K, panel.data());
    int64_t m0 = 0;
    for (; m0 + 6 <= M; m0 += 6) panel_tile<6>(X + m0 * ldx, ldx, panel.data(), K, c, C + m0 * ldc + n0, ldc, cols);
    if (m0 < M) edge[M - m0 - 1](X + m0 * ldx, ldx, panel.data(), K, c, C + m0 * ldc + n0, ldc, cols);
  }
}

// MODULA_KERNELS=portable takes the portable loops on any CPU (CTest runs the kernels' tests
// so: test_lora_kernels_portable).
bool has_avx2() {
  static const bool yes = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && !portable_requested();
  return yes;
}
#undef MODULA_AVX2
#endif

template <typename W>
void matvec_any(const W* w, const float* x, float* y, int64_t out, int64_t in) {
#ifdef MODULA_HAS_AVX2_PATH
  if (has_avx2()) return matvec_avx2(w, x, y, out, in);
#endif
  matvec_portable(w, x, y, out, in);
}

template <typename W>
void gemm_nt_any(const float* X, int64_t ldx, const W* w, const float* s, float c, float* C, int64_t ldc, int64_t M,
                 int64_t N, int64_t K) {
#ifdef MODULA_HAS_AVX2_PATH
  if (has_avx2()) return gemm_nt_avx2(X, ldx, w, s, c, C, ldc, M, N, K);
#endif
  gemm_nt_portable(X, ldx, w, s, c, C, ldc, M, N, K);
}

// int8 rows: the dot with the integers widened as they are read, then one multiply by the row's scale.
void matvec_int8(const int8_t* w, const float* row_scale, const float* x, float* y, int64_t out, int64_t in) {
  matvec_any(w, x, y, out, in);
  for (int64_t o = 0; o < out; ++o) y[o] *= row_scale[o];
}

template <typename W>
void bgmv_row_any(const W* A, const W* B, const float* x, float c, float* h, const float* y0, float* y, int64_t r,
                  int64_t in, int64_t out) {
  matvec_any(A, x, h, r, in);
  for (int64_t j = 0; j < r; ++j) h[j] *= c;
  matvec_any(B, h, y, out, r);
  if (y0)
    for (int64_t o = 0; o < out; ++o) y[o] += y0[o];
}

}  // namespace

void matvec(const float* W, const float* x, float* y, int64_t out, int64_t in) { matvec_any(W, x, y, out, in); }
void matvec(const uint16_t* W, const float* x, float* y, int64_t out, int64_t in) { matvec_any(W, x, y, out, in); }

void bgmv_row(const float* A, const float* B, const float* x, float c, float* h, const float* y0, float* y, int64_t r,
              int64_t in, int64_t out) {
  bgmv_row_any(A, B, x, c, h, y0, y, r, in, out);
}
void bgmv_row(const uint16_t* A, const uint16_t* B, const float* x, float c, float* h, const float* y0, float* y,
              int64_t r, int64_t in, int64_t out) {
  bgmv_row_any(A, B, x, c, h, y0, y, r, in, out);
}

void matvec(const int8_t* W, const float* row_scale, const float* x, float* y, int64_t out, int64_t in) {
  matvec_int8(W, row_scale, x, y, out, in);
}

void bgmv_row(const int8_t* A, const float* sA, const int8_t* B, const float* sB, const float* x, float c, float* h,
              float* y, int64_t r, int64_t in, int64_t out) {
  matvec_int8(A, sA, x, h, r, in);
  for (int64_t j = 0; j < r; ++j) h[j] *= c;
  matvec_int8(B, sB, h, y, out, r);
}

void gemm_nt(const float* X, int64_t ldx, const float* W, const float* s, float c, float* C, int64_t ldc, int64_t M,
             int64_t N, int64_t K) {
  gemm_nt_any(X, ldx, W, s, c, C, ldc, M, N, K);
}
void gemm_nt(const float* X, int64_t ldx, const uint16_t* W, const float* s, float c, float* C, int64_t ldc, int64_t M,
             int64_t N, int64_t K) {
  gemm_nt_any(X, ldx, W, s, c, C, ldc, M, N, K);
}
void gemm_nt(const float* X, int64_t ldx, const int8_t* W, const float* s, float c, float* C, int64_t ldc, int64_t M,
             int64_t N, int64_t K) {
  gemm_nt_any(X, ldx, W, s, c, C, ldc, M, N, K);
}

void widen_bf16(const uint16_t* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = widen(src[i]);
}

}  // namespace modula::detail
