#include "modules/lora_kernels.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include "modula/util/error.h"
#include "modules/matvec.h"

namespace modula::detail {
namespace {

// bgmv_row (matvec.h): one row's y = y0 + B (c A x), both matrices streamed once, front to
// back: from DRAM (16 adapters do not fit in the cache) this runs at the read bandwidth; a
// transposed B read in blocks of 64 outputs was 20% slower (strided streams), axpys over
// the whole of a transposed B no faster, and eight rows of a matrix at a time (one
// reduction per eight outputs) slower cold (eight streams: 11-14 GB/s against 22-25).
// Rows spread over ATen's threads: two cores pull more of DRAM than one (decode batch 16,
// 16 fp32 adapters: 0.76-0.81 of one adapter against 0.67-0.68 in one thread; bf16 0.90-0.91
// against 0.79-0.80). The bottleneck's gathered mat-vec gained nothing so (its modules are
// small: 0.89-0.91 against 0.85-0.90) and stays in one thread.

void check_ids(const int64_t* id, int64_t N, int64_t M, const char* tag = "lora bank") {
  for (int64_t n = 0; n < N; ++n)
    if (id[n] >= M)
      throw_error(tag, "selected: row " + std::to_string(n) + " names module " + std::to_string(id[n]) + " of " +
                           std::to_string(M));
}

template <typename W>
void bgmv(const torch::Tensor& x, const W* As, const W* Bs, const float* sA, const float* sB,
          const torch::Tensor& scaling, const torch::Tensor& ids, const torch::Tensor& w, int64_t r, torch::Tensor& y) {
  const int64_t N = x.size(0), in = x.size(2), out = y.size(2);
  const float *xs = x.data_ptr<float>(), *s = scaling.data_ptr<float>(), *ws = w.data_ptr<float>();
  const int64_t* id = ids.data_ptr<int64_t>();
  float* ys = y.data_ptr<float>();
  at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> h(static_cast<size_t>(r));
    for (int64_t n = begin; n < end; ++n) {
      const int64_t m = id[n];
      float* yn = ys + n * out;
      if (m < 0) {
        std::fill_n(yn, out, 0.0f);
        continue;
      }
      const float c = ws[n] * s[m];
      if constexpr (std::is_same_v<W, int8_t>)
        bgmv_row(As + m * r * in, sA + m * r, Bs + m * out * r, sB + m * out, xs + n * in, c, h.data(), yn, r, in, out);
      else
        bgmv_row(As + m * r * in, Bs + m * out * r, xs + n * in, c, h.data(), nullptr, yn, r, in, out);
    }
  });
}

// Module weights as stored: float or bfloat16 (raw bits).
template <typename Fn>
auto with_weight(const torch::Tensor& W, Fn&& fn) {
  if (W.scalar_type() == torch::kBFloat16) return fn(reinterpret_cast<const uint16_t*>(W.data_ptr()));
  return fn(W.data_ptr<float>());
}
template <typename Fn>
auto with_float_weights(const torch::Tensor& A, const torch::Tensor& B, Fn&& fn) {
  if (A.scalar_type() == torch::kBFloat16)
    return fn(reinterpret_cast<const uint16_t*>(A.data_ptr()), reinterpret_cast<const uint16_t*>(B.data_ptr()));
  return fn(A.data_ptr<float>(), B.data_ptr<float>());
}
template <typename Fn>
auto with_weights(const torch::Tensor& A, const torch::Tensor& B, Fn&& fn) {  // int8 too
  if (A.scalar_type() == torch::kChar) return fn(A.data_ptr<int8_t>(), B.data_ptr<int8_t>());
  return with_float_weights(A, B, fn);
}

// t in `dtype`; bf16 -> float32 by widening each value's bits, a plain loop the compiler
// vectorizes (lora_only 16 x 64 with a bf16 bank: +0.36 ms over a float32 bank, against
// +1 ms with the generic dtype conversion).
torch::Tensor in_dtype(const torch::Tensor& t, torch::ScalarType dtype) {
  if (t.scalar_type() == dtype) return t;
  if (t.scalar_type() != torch::kBFloat16 || dtype != torch::kFloat) return t.to(dtype);
  auto src = t.contiguous();
  auto out = torch::empty(src.sizes(), src.options().dtype(torch::kFloat));
  widen_bf16(reinterpret_cast<const uint16_t*>(src.data_ptr()), out.data_ptr<float>(), src.numel());
  return out;
}

// One module's matrix W [rows, n] in `dtype`: int8 times its row scales (two torch ops: a
// loop of our own measured no faster, lora_only 16 x 64 int8 2.01-4.63 against 2.13-4.86 ms),
// other storage as in_dtype.
torch::Tensor module_in(const torch::Tensor& W, const torch::Tensor& row_scale, torch::ScalarType dtype) {
  if (W.scalar_type() != torch::kChar) return in_dtype(W, dtype);
  return (W.to(torch::kFloat) * row_scale.unsqueeze(-1)).to(dtype);
}

// Float32 rows on the CPU: y[n, t] = c[n] · B_m (A_m x[n, t]) by gemm_nt (matvec.h) on the bank's
// A_m and B_m as stored (bf16 and int8 widened as they are packed), in blocks of up to
// kTokenBlock tokens of one row: the blocks are independent, spread over the threads.
constexpr int64_t kTokenBlock = 64;

torch::Tensor lora_row_tiles(const torch::Tensor& x, const BankWeights& bank, const torch::Tensor& c,
                             const int64_t* id) {
  const int64_t N = x.size(0), T = x.size(1), in = x.size(2), r = bank.A.size(1), out = bank.B.size(1);
  auto y = torch::empty({N, T, out}, x.options());
  if (N == 0 || T == 0) return y;
  const int64_t blocks = (T + kTokenBlock - 1) / kTokenBlock;
  const int64_t tb = (T + blocks - 1) / blocks;  // equal blocks
  auto coef = c.to(torch::kFloat).contiguous();
  const float *xs = x.data_ptr<float>(), *cs = coef.data_ptr<float>();
  const float* sA = bank.A_scale.defined() ? bank.A_scale.data_ptr<float>() : nullptr;
  const float* sB = bank.B_scale.defined() ? bank.B_scale.data_ptr<float>() : nullptr;
  float* ys = y.data_ptr<float>();
  with_weights(bank.A, bank.B, [&](auto As, auto Bs) {
    at::parallel_for(0, N * blocks, 1, [&](int64_t begin, int64_t end) {
      std::vector<float> h(static_cast<size_t>(tb * r));
      for (int64_t item = begin; item < end; ++item) {
        const int64_t n = item / blocks, t0 = item % blocks * tb, t = std::min(tb, T - t0), m = id[n];
        float* yn = ys + (n * T + t0) * out;
        if (m < 0) {
          std::fill_n(yn, t * out, 0.0f);
          continue;
        }
        gemm_nt(xs + (n * T + t0) * in, in, As + m * r * in, sA ? sA + m * r : nullptr, cs[n], h.data(), r, t, r, in);
        gemm_nt(h.data(), r, Bs + m * out * r, sB ? sB + m * out : nullptr, 1.0f, yn, out, t, out, r);
      }
    });
  });
  return y;
}

}  // namespace

bool cpu_float32(std::initializer_list<torch::Tensor> ts) {
  for (const auto& t : ts)
    if (!t.is_cpu() || t.scalar_type() != torch::kFloat) return false;
  return true;
}

bool kernel_weights(const torch::Tensor& t) {
  const auto d = t.scalar_type();
  return t.is_cpu() && (d == torch::kFloat || d == torch::kBFloat16 || d == torch::kChar);
}

torch::Tensor lora_bgmv(const torch::Tensor& x, const BankWeights& bank, const torch::Tensor& scaling,
                        const torch::Tensor& ids, const torch::Tensor& w) {
  const int64_t N = x.size(0), M = bank.A.size(0), r = bank.A.size(1);
  auto y = torch::empty({N, 1, bank.B.size(1)}, x.options());  // every row written (id −1: zeros)
  check_ids(ids.data_ptr<int64_t>(), N, M);
  const bool int8 = bank.A.scalar_type() == torch::kChar;
  const float* sA = int8 ? bank.A_scale.data_ptr<float>() : nullptr;
  const float* sB = int8 ? bank.B_scale.data_ptr<float>() : nullptr;
  with_weights(bank.A, bank.B, [&](auto As, auto Bs) { bgmv(x, As, Bs, sA, sB, scaling, ids, w, r, y); });
  return y;
}

torch::Tensor gathered_matvec(const torch::Tensor& W, const torch::Tensor& x, const torch::Tensor& ids) {
  const int64_t N = x.size(0), M = W.size(0), out = W.size(1), in = W.size(2);
  auto y = torch::empty({N, out}, x.options());
  auto id_host = ids.to(torch::kLong).contiguous();
  const int64_t* id = id_host.data_ptr<int64_t>();
  check_ids(id, N, M, "gathered mat-vec");
  auto xs = x.contiguous();
  auto Ws = W.contiguous();
  const float* xp = xs.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  with_weight(Ws, [&](auto Wp) {
    for (int64_t n = 0; n < N; ++n)
      if (id[n] < 0)
        std::fill_n(yp + n * out, out, 0.0f);
      else
        matvec(Wp + id[n] * out * in, xp + n * in, yp + n * out, out, in);
  });
  return y;
}

torch::Tensor lora_row_gemms(const torch::Tensor& x, const BankWeights& bank, const torch::Tensor& c,
                             const torch::Tensor& ids) {
  const int64_t N = x.size(0), M = bank.A.size(0);
  auto id_host = ids.to(torch::kLong).contiguous();
  const int64_t* id = id_host.data_ptr<int64_t>();
  check_ids(id, N, M);
  if (cpu_float32({x}) && kernel_weights(bank.A) && bank.B.scalar_type() == bank.A.scalar_type())
    return lora_row_tiles(x.contiguous(), bank, c, id);
  auto y = torch::empty({N, x.size(1), bank.B.size(1)}, x.options());
  auto scale = c.to(torch::kDouble).contiguous();
  const double* cs = scale.data_ptr<double>();
  const bool int8 = bank.A.scalar_type() == torch::kChar;
  for (int64_t n = 0; n < N; ++n) {
    auto yn = y[n];
    const int64_t m = id[n];
    if (m < 0) {
      yn.zero_();
      continue;
    }
    // A bank stored in another dtype: this row's module in x's (r·(in + out) values against the GEMMs' T·r·(in + out)).
    const auto dtype = x.scalar_type();
    auto A = module_in(bank.A[m], int8 ? bank.A_scale[m] : torch::Tensor(), dtype);
    auto B = module_in(bank.B[m], int8 ? bank.B_scale[m] : torch::Tensor(), dtype);
    at::mm_out(yn, at::mm(x[n], A.t()).mul_(cs[n]), B.t());
  }
  return y;
}

torch::Tensor lora_add_rows(const torch::Tensor& x, const torch::Tensor& A, const torch::Tensor& B, double c,
                            const torch::Tensor& y) {
  const int64_t r = A.size(0), in = A.size(1), out = B.size(0);
  auto xs = x.reshape({-1, in}).contiguous(), y0 = y.reshape({-1, out}).contiguous();
  auto A_ = A.contiguous(), B_ = B.contiguous();
  auto result = torch::empty_like(y0);
  std::vector<float> h(static_cast<size_t>(r));
  with_float_weights(A_, B_, [&](auto As, auto Bs) {
    for (int64_t n = 0; n < xs.size(0); ++n)
      bgmv_row(As, Bs, xs.data_ptr<float>() + n * in, static_cast<float>(c), h.data(), y0.data_ptr<float>() + n * out,
               result.data_ptr<float>() + n * out, r, in, out);
  });
  return result.view(y.sizes());
}

}  // namespace modula::detail
