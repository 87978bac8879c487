// run_bench: options, the workload table, and the measurements as JSON and as a table.
#include <torch/cuda.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <thread>

#include "bench/bench_internal.h"
#include "modula/util/error.h"
#include "modula/util/strings.h"

namespace modula::bench {
namespace {

constexpr std::string_view kBenchRunTag = "bench";

using WorkloadFn = std::vector<Measurement> (*)(const BenchContext&);

const std::vector<std::pair<std::string, WorkloadFn>>& bench_workload_table() {
  static const std::vector<std::pair<std::string, WorkloadFn>> table = {
      {"train_lora", bench_train_lora}, {"prefill", bench_prefill}, {"lora_only", bench_lora_only},
      {"decode", bench_decode},         {"moe", bench_moe},         {"projections", bench_projections},
      {"bottleneck", bench_bottleneck}};
  return table;
}

std::string bench_run_number(double v, const char* format) {
  if (std::isnan(v)) return "–";
  char buf[48];
  std::snprintf(buf, sizeof buf, format, v);
  return buf;
}

nlohmann::json bench_run_or_null(double v) { return std::isnan(v) ? nlohmann::json(nullptr) : nlohmann::json(v); }

}  // namespace

Size parse_size(const std::string& name) {
  if (name == "quick") return Size::Quick;
  if (name == "cpu") return Size::Cpu;
  if (name == "gpu") return Size::Gpu;
  throw_error(kBenchRunTag, "unknown size '" + name + "' (quick, cpu, gpu)");
}

std::string to_string(Size size) { return size == Size::Quick ? "quick" : size == Size::Cpu ? "cpu" : "gpu"; }

const std::vector<std::string>& workload_names() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> out;
    for (const auto& [name, fn] : bench_workload_table()) out.push_back(name);
    return out;
  }();
  return names;
}

void BenchOptions::validate() const {
  for (const auto& w : workloads)
    if (std::find(workload_names().begin(), workload_names().end(), w) == workload_names().end())
      throw_error(kBenchRunTag, "workloads: unknown workload '" + w + "' (" + joined(workload_names()) + ")");
  if (iters < 0) throw_error(kBenchRunTag, "iters must be >= 0 (0 = the size's default)");
  if (warmup < -1) throw_error(kBenchRunTag, "warmup must be >= 0 (-1 = the size's default)");
  if (threads < 0) throw_error(kBenchRunTag, "threads must be >= 0 (0 = every core)");
}

nlohmann::json Measurement::to_json() const {
  return {{"workload", workload},
          {"variant", variant},
          {"shape", shape},
          {"device", device},
          {"dtype", dtype},
          {"threads", threads},
          {"pinned_cpus", pinned_cpus},
          {"iters", iters},
          {"warmup", warmup},
          {"calls_per_sample", calls_per_sample},
          {"median_s", median_s},
          {"min_s", min_s},
          {"p10_s", p10_s},
          {"p90_s", p90_s},
          {"max_s", max_s},
          {"tokens", tokens},
          {"tokens_per_s", tokens_per_s},
          {"flops", flops},
          {"gflops_per_s", gflops_per_s},
          {"error", bench_run_or_null(error)},
          {"reference", reference},
          {"baseline", baseline},
          {"vs_baseline", bench_run_or_null(vs_baseline)},
          {"note", note}};
}

std::vector<Measurement> run_bench(const BenchOptions& options,
                                   const std::function<void(const Measurement&)>& on_result) {
  options.validate();
  BenchContext ctx;
  ctx.size = options.size;
  ctx.seed = options.seed;
  ctx.iters = options.iters > 0 ? options.iters : options.size == Size::Quick ? 2 : 10;
  ctx.warmup = options.warmup >= 0 ? options.warmup : options.size == Size::Quick ? 1 : 2;
  if (options.size == Size::Gpu) {
    if (!torch::cuda::is_available())
      throw_error<std::runtime_error>(kBenchRunTag, "--size gpu needs CUDA (this libtorch sees no GPU)");
    ctx.device = torch::Device(torch::kCUDA, 0);
    ctx.dtype = torch::kBFloat16;
  }
  const int threads = options.threads > 0 ? options.threads : static_cast<int>(std::thread::hardware_concurrency());
  torch::set_num_threads(std::max(threads, 1));
  ctx.threads = torch::get_num_threads();
  if (options.pin_threads) ctx.pinned = std::make_shared<PinnedThreads>(cpus_for_threads(ctx.threads));

  std::vector<Measurement> all;
  for (const auto& [name, fn] : bench_workload_table()) {
    if (!options.workloads.empty() &&
        std::find(options.workloads.begin(), options.workloads.end(), name) == options.workloads.end())
      continue;
    torch::manual_seed(options.seed);
    for (auto& m : fn(ctx)) {
      if (on_result) on_result(m);
      all.push_back(std::move(m));
    }
  }
  return all;
}

train::Table bench_table(const std::vector<Measurement>& results) {
  train::Table table{"",
                     {"workload", "variant", "shape", "median ms", "min–max ms", "tokens/s", "GFLOP/call", "GFLOP/s",
                      "x baseline", "max err"},
                     {},
                     ""};
  for (const auto& m : results)
    table.rows.push_back({m.workload, m.variant, m.shape, bench_run_number(1e3 * m.median_s, "%.3f"),
                          bench_run_number(1e3 * m.min_s, "%.3f") + "–" + bench_run_number(1e3 * m.max_s, "%.3f"),
                          bench_run_number(m.tokens_per_s, "%.0f"), bench_run_number(m.flops / 1e9, "%.4f"),
                          bench_run_number(m.gflops_per_s, "%.2f"),
                          m.baseline.empty() ? "–" : bench_run_number(m.vs_baseline, "%.2f") + " " + m.baseline,
                          bench_run_number(m.error, "%.1e")});
  return table;
}

}  // namespace modula::bench
