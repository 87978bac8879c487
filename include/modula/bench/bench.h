// `modula bench`: honest, repeatable timings of the paths modula exists to make fast
// (issue 11): LoRA training, prefill and decode with no / one / 16 mixed adapters, the
// LoRA delta path alone, and MoE FFN layers against the dense FFN of equal active size.
//
//   modula::bench::BenchOptions o;  o.size = modula::bench::Size::Quick;
//   auto results = modula::bench::run_bench(o);           // one Measurement per variant
//   std::cout << modula::train::format_table(modula::bench::bench_table(results));
//
// Method (docs/benchmarks.md): every workload builds its models once, runs each variant
// `warmup` times untimed, then `iters` timed rounds with the variants alternating
// round-robin (a, b, c, a, b, c, ...) so that load from other processes falls on all alike;
// CUDA is synchronised around each timed call. A measurement reports the median and the
// spread (min, p10, p90, max) in seconds, tokens/s = tokens per call / median, the analytic
// FLOPs per call (2·m·n·k per matmul, elementwise work not counted) and achieved GFLOP/s,
// and where the variant has a reference, the max |output - reference|.
//
// Sizes: Quick (tiny, seconds in all: the test), Cpu (hidden 512, 4 layers, fp32 on CPU),
// Gpu (the peer benchmark peft_bench.py's 271M Llama: hidden 1024, 16 layers, bf16 on CUDA).
#pragma once

#include <cstdint>
#include <functional>
#include <limits>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "modula/train/report.h"

namespace modula::bench {

enum class Size { Quick, Cpu, Gpu };
// "quick", "cpu", "gpu"; std::invalid_argument naming the valid ones otherwise.
Size parse_size(const std::string& name);
std::string to_string(Size size);

// The workloads in the order they run: train_lora, prefill, lora_only, decode, moe,
// projections, bottleneck.
const std::vector<std::string>& workload_names();

struct BenchOptions {
  Size size = Size::Cpu;
  std::vector<std::string> workloads;  // empty = every workload
  int64_t iters = 0;                   // timed rounds per variant; 0 = the size's default (quick 2, else 10)
  int64_t warmup = -1;                 // untimed rounds per variant first; -1 = default (quick 1, else 2)
  int threads = 0;                     // torch::set_num_threads; 0 = every core (hardware_concurrency)
  bool pin_threads = true;             // after each workload's warm-up: the calling thread on the first of
                                       // `threads` CPUs, every other thread on the rest (util/threads.h);
                                       // every thread's mask is restored when run_bench returns
  uint64_t seed = 0;                   // model, adapter and input initialisation

  // Throws std::invalid_argument naming the bad field (an unknown workload lists the known).
  void validate() const;
};

// A timed sample of a call without setup spans at least this long: shorter calls are
// repeated within it (Measurement::calls_per_sample) and timed per call.
constexpr double kMinSampleSeconds = 0.005;

struct Measurement {
  std::string workload, variant;  // e.g. "prefill", "mixed16"
  std::string shape;              // what one call processes, e.g. "16x64 tokens, LoRA r64 all-linear"
  std::string device, dtype;      // "cpu" / "cuda", "float32" / "bfloat16"
  int threads = 0;                // intra-op threads while timing
  std::vector<int> pinned_cpus;   // the CPUs the threads were pinned to (empty: not pinned)
  int64_t iters = 0, warmup = 0;
  int64_t calls_per_sample = 1;  // calls timed together per sample (sub-millisecond calls: several)
  double median_s = 0, min_s = 0, max_s = 0, p10_s = 0, p90_s = 0;  // seconds per call, over the samples
  double tokens = 0;                                                // tokens per call
  double tokens_per_s = 0;                                          // tokens / median_s
  double flops = 0;                                                 // analytic FLOPs per call
  double gflops_per_s = 0;                                          // flops / median_s / 1e9
  double error = std::numeric_limits<double>::quiet_NaN();          // max |out - reference|; NaN = none
  std::string reference;                                            // what `error` compares against
  std::string baseline;                                             // the variant tokens/s is compared to ("" = none)
  double vs_baseline = std::numeric_limits<double>::quiet_NaN();    // tokens_per_s / the baseline's
  std::string note;                                                 // how the FLOPs are counted, routing balance, ...

  // One JSON object (NaN fields as null).
  nlohmann::json to_json() const;
};

// Runs the selected workloads (sets torch's thread count and, per workload, the seed).
// `on_result` (optional) sees each workload's measurements as soon as they exist.
// Throws std::invalid_argument for bad options, std::runtime_error for Size::Gpu without CUDA.
std::vector<Measurement> run_bench(const BenchOptions& options,
                                   const std::function<void(const Measurement&)>& on_result = {});

// Writes the prefill / decode workloads' Llama (HF folder `dir`/model) and their 16 LoRA
// adapters (`dir`/adapters/a0..a15, PEFT folders) for another engine, and
// `dir`/reference.json: a 16-token prompt with modula's greedy 32-token continuation, with no
// adapter and with a0 (bench/llama_cpp/run.sh checks llama.cpp reproduces them).
void write_models(const BenchOptions& options, const std::string& dir);

// One row per measurement: workload, variant, shape, median ms, spread, tokens/s, GFLOP per
// call, GFLOP/s, × baseline, error.
train::Table bench_table(const std::vector<Measurement>& results);

}  // namespace modula::bench
