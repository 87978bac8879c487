// Round-robin timing and order statistics of the bench.
#include <torch/cuda.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>

#include "bench/bench_internal.h"
#include "modula/util/dtype.h"

namespace modula::bench {
namespace {

// The q-quantile of sorted samples, linear interpolation between the two nearest ranks.
double timing_quantile(const std::vector<double>& sorted, double q) {
  if (sorted.empty()) return 0;
  const double pos = q * static_cast<double>(sorted.size() - 1);
  const auto lo = static_cast<size_t>(std::floor(pos));
  const size_t hi = std::min(lo + 1, sorted.size() - 1);
  return sorted[lo] + (pos - static_cast<double>(lo)) * (sorted[hi] - sorted[lo]);
}

void timing_sync(const BenchContext& ctx) {
  if (ctx.device.is_cuda()) torch::cuda::synchronize();
}

}  // namespace

Timing summarize(std::vector<double> seconds) {
  Timing t;
  t.seconds = seconds;
  if (seconds.empty()) return t;
  std::sort(seconds.begin(), seconds.end());
  t.min = seconds.front(), t.max = seconds.back();
  t.median = timing_quantile(seconds, 0.5);
  t.p10 = timing_quantile(seconds, 0.1), t.p90 = timing_quantile(seconds, 0.9);
  return t;
}

// Calls per sample: enough that one sample spans kMinSampleSeconds at the fastest warm-up speed.
int64_t calls_per_sample(const Variant& v, double fastest_call) {
  constexpr int64_t kMaxCalls = 10000;
  if (v.setup || !(fastest_call > 0)) return 1;  // no warm-up (infinite): the clamp below gives 1 too
  return std::clamp<int64_t>(static_cast<int64_t>(std::ceil(kMinSampleSeconds / fastest_call)), 1, kMaxCalls);
}

// Seconds per call over one sample: `calls` calls after the variant's setup.
double time_sample(const Variant& v, int64_t calls, const BenchContext& ctx) {
  if (v.setup) v.setup();
  timing_sync(ctx);
  const auto start = std::chrono::steady_clock::now();
  for (int64_t c = 0; c < calls; ++c) v.call();
  timing_sync(ctx);
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() / static_cast<double>(calls);
}

std::vector<Timing> time_round_robin(const std::vector<Variant>& variants, const BenchContext& ctx) {
  std::vector<double> fastest(variants.size(), std::numeric_limits<double>::infinity());  // no warm-up: 1 call
  for (int64_t round = 0; round < ctx.warmup; ++round)
    for (size_t i = 0; i < variants.size(); ++i) fastest[i] = std::min(fastest[i], time_sample(variants[i], 1, ctx));
  std::vector<int64_t> calls(variants.size());
  for (size_t i = 0; i < variants.size(); ++i) calls[i] = calls_per_sample(variants[i], fastest[i]);
  if (ctx.pinned) ctx.pinned->apply();  // the pools exist now; threads started since get pinned too
  std::vector<std::vector<double>> seconds(variants.size());
  for (int64_t round = 0; round < ctx.iters; ++round)
    for (size_t i = 0; i < variants.size(); ++i) seconds[i].push_back(time_sample(variants[i], calls[i], ctx));
  std::vector<Timing> out;
  for (size_t i = 0; i < variants.size(); ++i) {
    out.push_back(summarize(std::move(seconds[i])));
    out.back().calls_per_sample = calls[i];
  }
  return out;
}

Measurement measurement(const BenchContext& ctx, const std::string& workload, const std::string& variant,
                        const std::string& shape, const Timing& t, double tokens, double flops) {
  Measurement m;
  m.workload = workload, m.variant = variant, m.shape = shape;
  m.device = ctx.device.is_cuda() ? "cuda" : "cpu";
  m.dtype = dtype_name(ctx.dtype);
  m.threads = ctx.threads;
  if (ctx.pinned && ctx.pinned->pinned()) m.pinned_cpus = ctx.pinned->cpus();  // what was done, not asked
  m.iters = ctx.iters, m.warmup = ctx.warmup;
  m.median_s = t.median, m.min_s = t.min, m.max_s = t.max, m.p10_s = t.p10, m.p90_s = t.p90;
  m.calls_per_sample = t.calls_per_sample;
  m.tokens = tokens, m.flops = flops;
  if (t.median > 0) m.tokens_per_s = tokens / t.median, m.gflops_per_s = flops / t.median / 1e9;
  return m;
}

void compare_to(std::vector<Measurement>& results, const std::string& baseline) {
  for (auto& m : results)
    for (const auto& b : results)
      if (b.variant == baseline && b.workload == m.workload && b.shape == m.shape && b.tokens_per_s > 0) {
        m.baseline = baseline;
        m.vs_baseline = m.tokens_per_s / b.tokens_per_s;
      }
}

std::string dims(int64_t a, int64_t b) { return std::to_string(a) + "x" + std::to_string(b); }

}  // namespace modula::bench
