// modula bench: timed workloads (LoRA training, prefill, decode, the LoRA delta alone, MoE
// FFN layers) with FLOP counts and reference errors; a table, then one JSON object per
// measurement (docs/benchmarks.md).
#include "modula/bench/bench.h"

#include <cstdlib>
#include <fstream>
#include <iostream>

#include "commands.h"
#include "flags.h"
#include "modula/util/error.h"

namespace modula::cli {
namespace {

// What libgomp was started with (src/util/omp_wait_policy.cpp sets PASSIVE unless the user
// set it): the timings depend on it (docs/benchmarks.md, Threads).
std::string omp_wait_policy() {
  const char* v = std::getenv("OMP_WAIT_POLICY");
  return v ? (*v ? v : "(empty: libgomp's default)") : "unset (libgomp's default)";
}

constexpr std::string_view kBenchCliTag = "bench";

struct BenchArgs {
  bool quick = false;
  std::string size = "cpu", json_out, write_models;
  std::vector<std::string> workloads;
  int64_t iters = 0;
  int threads = 0;
  bool no_pin = false;
  uint64_t seed = 0;
};

std::string pinning(const std::vector<int>& cpus) {
  if (cpus.empty()) return "threads not pinned";
  std::string out = "threads pinned to CPU";
  for (size_t i = 0; i < cpus.size(); ++i) out += (i ? "," : " ") + std::to_string(cpus[i]);
  return out;
}

}  // namespace

void add_bench(CLI::App& app) {
  static BenchArgs a;
  auto* cmd = app.add_subcommand("bench",
                                 "Time training, prefill, decode, the LoRA delta, MoE layers, projections and "
                                 "bottleneck adapters: median and spread, tokens/s, FLOPs, "
                                 "GFLOP/s, error against a reference; a table, then JSON lines");
  cmd->add_flag("--quick", a.quick, "Tiny sizes and 2 iterations: seconds in all (a smoke test)");
  cmd->add_option("--size", a.size, "cpu (hidden 512, fp32) or gpu (peft_bench.py's 271M Llama, bf16 on CUDA)")
      ->check(CLI::IsMember({"cpu", "gpu"}))
      ->capture_default_str();
  cmd->add_option("--workloads", a.workloads, "Comma-separated subset (default: all)")
      ->delimiter(',')
      ->check(CLI::IsMember(bench::workload_names()));
  cmd->add_option("--iters", a.iters, "Timed rounds per variant (default: 10, --quick 2)")
      ->check(CLI::Range(1, 100000));
  cmd->add_option("--threads", a.threads, "Intra-op CPU threads, at least 1 (default: every core)")
      ->check(CLI::Range(1, 1 << 16));
  cmd->add_flag("--no-pin", a.no_pin,
                "Leave threads unpinned (default: the main thread on the first CPU, the pools' threads on the "
                "others)");
  cmd->add_option("--seed", a.seed, "Seed of the models, adapters and inputs")->capture_default_str();
  cmd->add_option("--json", a.json_out, "Also write the JSON lines to this file");
  cmd->add_option("--write-models", a.write_models,
                  "Write the prefill/decode Llama, its 16 LoRA adapters and a greedy reference to this folder "
                  "(for bench/llama_cpp) instead of timing");
  cmd->callback([] {
    bench::BenchOptions o;
    o.size = a.quick ? bench::Size::Quick : bench::parse_size(a.size);
    o.workloads = a.workloads, o.iters = a.iters, o.threads = a.threads, o.seed = a.seed;
    o.pin_threads = !a.no_pin;
    if (!a.write_models.empty()) {
      bench::write_models(o, a.write_models);
      std::cout << "wrote " << a.write_models << "/model, " << a.write_models << "/adapters/a0..a15, " << a.write_models
                << "/reference.json\n";
      return;
    }
    std::ofstream json;
    if (!a.json_out.empty()) {
      json.open(a.json_out);
      check<std::runtime_error>(json.good(), kBenchCliTag, "cannot write " + a.json_out);
    }
    auto results = bench::run_bench(o, [](const bench::Measurement& m) {
      std::cerr << "[bench] " << m.workload << " " << m.variant << " (" << m.shape << "): " << m.median_s * 1e3
                << " ms\n";
    });
    if (!results.empty())
      std::cout << "modula bench: size " << (a.quick ? "quick" : a.size) << ", device " << results[0].device << ", "
                << results[0].dtype << ", " << results[0].threads << " threads (" << pinning(results[0].pinned_cpus)
                << "), " << results[0].iters << " timed rounds per variant after " << results[0].warmup
                << " warm-up, variants round-robin (a call under " << 1e3 * bench::kMinSampleSeconds
                << " ms repeated within its sample), OMP_WAIT_POLICY " << omp_wait_policy() << "\n";
    std::cout << train::format_table(bench::bench_table(results));
    for (const auto& m : results) {
      const auto line = m.to_json().dump();
      std::cout << line << "\n";
      if (json.is_open()) json << line << "\n";
    }
    if (json.is_open()) {
      json.close();
      check<std::runtime_error>(!json.fail(), kBenchCliTag, "cannot write " + a.json_out);
    }
  });
}

}  // namespace modula::cli
