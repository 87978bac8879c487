// modula bench (bench/bench.h): the quick run of every workload through the library is
// well-formed and sane, the mixed paths match their per-row references, and the CLI writes
// one JSON line per measurement.
#include <gtest/gtest.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <sstream>
#include <thread>

#include "bench/bench_internal.h"
#include "modula/backbone/registry.h"
#include "modula/bench/bench.h"
#include "modula/composition/registry.h"
#include "modula/util/fs.h"
#include "modula/util/threads.h"
#include "support/process.h"
#include "support/temp_dir.h"

using namespace modula;
using namespace modula::bench;
using json = nlohmann::json;

namespace {

const std::vector<Measurement>& quick_results() {
  static const std::vector<Measurement> results = [] {
    BenchOptions o;
    o.size = Size::Quick;
    o.threads = 1;
    return run_bench(o);
  }();
  return results;
}

// Every (workload, variant) a quick run must produce, with how many shapes each has.
const std::map<std::pair<std::string, std::string>, int> kExpected = {{{"train_lora", "train_loop"}, 1},
                                                                      {{"train_lora", "bare_adamw"}, 1},
                                                                      {{"train_lora", "checkpointed"}, 1},
                                                                      {{"prefill", "none"}, 1},
                                                                      {{"prefill", "single"}, 1},
                                                                      {{"prefill", "mixed16"}, 1},
                                                                      {{"prefill", "mixed16_bf16"}, 1},
                                                                      {{"prefill", "mixed16_int8"}, 1},
                                                                      {{"lora_only", "base"}, 2},
                                                                      {{"lora_only", "single"}, 2},
                                                                      {{"lora_only", "mixed16"}, 2},
                                                                      {{"lora_only", "mixed16_bf16"}, 2},
                                                                      {{"lora_only", "mixed16_int8"}, 2},
                                                                      {{"decode", "none"}, 2},
                                                                      {{"decode", "single"}, 2},
                                                                      {{"decode", "mixed16"}, 2},
                                                                      {{"decode", "mixed16_bf16"}, 2},
                                                                      {{"decode", "mixed16_int8"}, 2},
                                                                      {{"moe", "dense"}, 1},
                                                                      {{"moe", "top2of8"}, 1},
                                                                      {{"moe", "top2of32"}, 1},
                                                                      {{"projections", "separate"}, 3},
                                                                      {{"projections", "fused"}, 3},
                                                                      {{"bottleneck", "none"}, 2},
                                                                      {{"bottleneck", "single"}, 2},
                                                                      {{"bottleneck", "mixed16"}, 2}};

}  // namespace

TEST(Bench, QuickRunHasEveryWorkloadAndVariant) {
  std::map<std::pair<std::string, std::string>, int> seen;
  for (const auto& m : quick_results()) ++seen[{m.workload, m.variant}];
  EXPECT_EQ(seen, kExpected);
}

TEST(Bench, MeasurementsAreSane) {
  for (const auto& m : quick_results()) {
    SCOPED_TRACE(m.workload + "/" + m.variant + " " + m.shape);
    EXPECT_EQ(m.iters, 2);
    EXPECT_EQ(m.warmup, 1);
    EXPECT_EQ(m.threads, 1);
    EXPECT_EQ(m.device, "cpu");
    EXPECT_EQ(m.dtype, "float32");
    EXPECT_FALSE(m.shape.empty());
    EXPECT_FALSE(m.note.empty());
    for (double s : {m.min_s, m.p10_s, m.median_s, m.p90_s, m.max_s}) EXPECT_TRUE(std::isfinite(s) && s > 0) << s;
    EXPECT_LE(m.min_s, m.p10_s);
    EXPECT_LE(m.p10_s, m.median_s);
    EXPECT_LE(m.median_s, m.p90_s);
    EXPECT_LE(m.p90_s, m.max_s);
    EXPECT_GE(m.calls_per_sample, 1);
    if (m.workload == "decode") {
      EXPECT_EQ(m.calls_per_sample, 1);  // a fresh cache (setup) before every sample
    }
    EXPECT_GT(m.tokens, 0);
    EXPECT_NEAR(m.tokens_per_s, m.tokens / m.median_s, 1e-9 * m.tokens_per_s);
    EXPECT_GT(m.flops, 0);
    EXPECT_NEAR(m.gflops_per_s, m.flops / m.median_s / 1e9, 1e-9 * m.gflops_per_s);
    if (!m.baseline.empty()) {
      EXPECT_TRUE(std::isfinite(m.vs_baseline) && m.vs_baseline > 0);
    }
    if (m.variant == m.baseline) {
      EXPECT_DOUBLE_EQ(m.vs_baseline, 1.0);
    }
  }
}

// The mixed batches and the MoE dispatch against their references, in fp32; the banks
// stored in bfloat16 or int8 off by that rounding: more than float rounding, far less than
// the delta.
TEST(Bench, MixedAndMoeMatchTheirReferences) {
  int checked = 0;
  for (const auto& m : quick_results()) {
    const bool bf16 = m.variant == "mixed16_bf16", int8 = m.variant == "mixed16_int8";
    const bool decode = m.shape.rfind("batch ", 0) == 0;  // decode shapes: the prefill checks the same path
    const bool has_reference = ((m.variant == "mixed16" || bf16 || int8) && !decode) ||
                               m.variant.rfind("top2of", 0) == 0 || m.variant == "fused";
    SCOPED_TRACE(m.workload + "/" + m.variant + " " + m.shape);
    if (!has_reference) {
      EXPECT_TRUE(std::isnan(m.error));
      continue;
    }
    ++checked;
    EXPECT_FALSE(m.reference.empty());
    EXPECT_TRUE(std::isfinite(m.error));
    EXPECT_LT(m.error, bf16 || int8 ? 1e-2 : 1e-4);
    if (bf16 || int8) {
      EXPECT_GT(m.error, 1e-6);
    }
  }
  EXPECT_EQ(checked, 15);  // prefill, lora_only x 2 shapes (each also bf16, int8), moe x 2, projections x 3, bottleneck
}

TEST(Bench, FlopCountsFollowTheShapes) {
  const LlamaShape s{64, 128, 2, 4, 256, 256};
  // Per token, per layer: q/k/v/o 4·H² and gate/up/down 3·H·I multiply-adds.
  EXPECT_DOUBLE_EQ(linear_flops_per_token(s), 2.0 * 2 * (4 * 64 * 64 + 3 * 64 * 128));
  EXPECT_DOUBLE_EQ(lora_flops_per_token(s, 8), 2.0 * 8 * 2 * (4 * 128 + 3 * (64 + 128)));
  EXPECT_DOUBLE_EQ(attention_flops(s, 3, 5), 4.0 * 3 * 5 * 64 * 2);
  // Decoding one token after 9 equals the 10th position of a prefill's attention row sum.
  EXPECT_DOUBLE_EQ(forward_flops(s, 2, 1, 9, 0),
                   2 * (linear_flops_per_token(s) + lm_head_flops_per_token(s) + attention_flops(s, 1, 10)));
  EXPECT_DOUBLE_EQ(ffn_flops(10, 4, 6, 2, 8), 10.0 * (2 * 4 * 8 + 2 * 3 * 2 * 4 * 6));
}

TEST(Bench, SummarizeInterpolatesRanks) {
  auto t = summarize({5, 1, 4, 2, 3});
  EXPECT_DOUBLE_EQ(t.median, 3);
  EXPECT_DOUBLE_EQ(t.min, 1);
  EXPECT_DOUBLE_EQ(t.max, 5);
  EXPECT_DOUBLE_EQ(t.p10, 1.4);
  EXPECT_DOUBLE_EQ(t.p90, 4.6);
  EXPECT_DOUBLE_EQ(summarize({1, 2}).median, 1.5);
}

// Sub-millisecond calls are repeated within a sample until it spans kMinSampleSeconds; a
// variant with a setup is timed one call per sample, after its setup.
TEST(Bench, ShortCallsAreRepeatedPerSample) {
  auto spin = [](double seconds) {
    const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
    while (std::chrono::steady_clock::now() < end) {
    }
  };
  int short_calls = 0, long_calls = 0, setups = 0, setup_calls = 0;
  std::vector<Variant> variants = {
      {"short", [&] { ++short_calls, spin(kMinSampleSeconds / 20); }},
      {"long", [&] { ++long_calls, spin(2 * kMinSampleSeconds); }},
      {"with_setup", [&] { ++setup_calls, spin(kMinSampleSeconds / 20); }, [&] { ++setups; }}};
  BenchContext ctx;
  ctx.iters = 3, ctx.warmup = 2;
  auto t = time_round_robin(variants, ctx);
  ASSERT_EQ(t.size(), 3u);
  EXPECT_GE(t[0].calls_per_sample, 2);
  EXPECT_LE(t[0].calls_per_sample, 21);
  EXPECT_EQ(short_calls, ctx.warmup + ctx.iters * t[0].calls_per_sample);
  EXPECT_EQ(t[1].calls_per_sample, 1);
  EXPECT_EQ(long_calls, ctx.warmup + ctx.iters);
  EXPECT_EQ(t[2].calls_per_sample, 1);
  EXPECT_EQ(setups, ctx.warmup + ctx.iters);
  EXPECT_EQ(setup_calls, ctx.warmup + ctx.iters);
  for (const auto& s : t[0].seconds) {  // per call, not per sample
    EXPECT_GE(s, 0.9 * kMinSampleSeconds / 20);
    EXPECT_LT(s, kMinSampleSeconds / 2);
  }
  EXPECT_EQ(t[0].seconds.size(), 3u);
}

TEST(Bench, OptionsAndJson) {
  BenchOptions o;
  o.workloads = {"decode", "nope"};
  try {
    o.validate();
    FAIL() << "unknown workload accepted";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("unknown workload 'nope' (train_lora, prefill"), std::string::npos)
        << e.what();
  }
  EXPECT_THROW(parse_size("huge"), std::invalid_argument);
  EXPECT_EQ(parse_size("gpu"), Size::Gpu);
  auto j = quick_results().front().to_json();
  for (const char* key :
       {"workload", "variant", "shape", "median_s", "min_s", "max_s", "p10_s", "p90_s", "tokens_per_s", "flops",
        "gflops_per_s", "error", "threads", "pinned_cpus", "calls_per_sample"})
    EXPECT_TRUE(j.contains(key)) << key;
  EXPECT_EQ(j["pinned_cpus"].get<std::vector<int>>(), cpus_for_threads(1));  // pinned by default
  EXPECT_TRUE(j["error"].is_null());                                         // train_lora has no reference
  auto table = bench_table(quick_results());
  EXPECT_EQ(table.rows.size(), quick_results().size());
}

// A thread that parks until told to exit, reporting its task id.
struct ParkedThread {
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  std::atomic<int> tid{0};
  std::thread thread{[this] {
    tid = static_cast<int>(syscall(SYS_gettid));
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [this] { return done; });
  }};
  ParkedThread() {
    while (tid == 0) std::this_thread::yield();
  }
  ~ParkedThread() {
    {
      std::lock_guard<std::mutex> lock(mu);
      done = true;
    }
    cv.notify_all();
    thread.join();
  }
};

// The bench's pinning: the calling thread on the first CPU, the others on the rest; threads
// started while pinned inherit the pin and are re-pinned by the next apply; the destructor
// gives every thread its mask back.
TEST(Threads, PinnedThreadsPinThenRestore) {
  const auto all = thread_cpus();
  ASSERT_FALSE(all.empty());
  EXPECT_EQ(cpus_for_threads(1), std::vector<int>{all[0]});
  EXPECT_EQ(cpus_for_threads(1 << 20), all);  // more threads than CPUs: every CPU
  const auto cpus = cpus_for_threads(2);
  const std::vector<int> workers = cpus.size() > 1 ? std::vector<int>(cpus.begin() + 1, cpus.end()) : cpus;
  ParkedThread before;
  EXPECT_EQ(thread_cpus(before.tid), all);
  std::optional<PinnedThreads> pin(std::in_place, cpus);
  EXPECT_GE(pin->apply(), 2);
  EXPECT_TRUE(pin->pinned());
  EXPECT_EQ(thread_cpus(), std::vector<int>{cpus[0]});
  EXPECT_EQ(thread_cpus(before.tid), workers);
  ParkedThread during;  // inherits the caller's pin
  EXPECT_EQ(thread_cpus(during.tid), std::vector<int>{cpus[0]});
  pin->apply();
  EXPECT_EQ(thread_cpus(during.tid), workers);
  ParkedThread after_apply;
  {
    PinnedThreads nothing({});  // no CPUs: pins and restores nothing
    EXPECT_EQ(nothing.apply(), 0);
    EXPECT_FALSE(nothing.pinned());
  }
  EXPECT_EQ(thread_cpus(), std::vector<int>{cpus[0]});
  pin.reset();  // the threads it saw get their masks back, `after_apply` the caller's
  EXPECT_EQ(thread_cpus(before.tid), all);
  EXPECT_EQ(thread_cpus(during.tid), all);
  EXPECT_EQ(thread_cpus(after_apply.tid), all);
  EXPECT_EQ(thread_cpus(), all);
}

#ifdef MODULA_CLI
TEST(BenchCli, QuickRunWritesJsonLines) {
  modula::testing::TempDir d;
  auto pid = modula::testing::spawn(
      {MODULA_CLI, "bench", "--quick", "--threads", "1", "--workloads", "lora_only,moe", "--json", d / "out.jsonl"},
      d / "log");
  ASSERT_EQ(modula::testing::wait_exit(pid), 0) << modula::testing::slurp(d / "log");
  std::istringstream lines(modula::testing::slurp(d / "out.jsonl"));
  std::set<std::string> variants;
  int n = 0;
  for (std::string line; std::getline(lines, line); ++n) {
    auto j = json::parse(line);
    EXPECT_GT(j["median_s"].get<double>(), 0);
    variants.insert(j["workload"].get<std::string>() + "/" + j["variant"].get<std::string>());
  }
  EXPECT_EQ(n, 13);  // lora_only: 5 variants x 2 shapes; moe: 3
  EXPECT_EQ(variants.size(), 8u);
  EXPECT_NE(modula::testing::slurp(d / "log").find("GFLOP/s"), std::string::npos);  // the table
  EXPECT_NE(modula::testing::slurp(d / "log").find("threads pinned to CPU"), std::string::npos);
  pid = modula::testing::spawn({MODULA_CLI, "bench", "--quick", "--threads", "1", "--workloads", "moe", "--no-pin"},
                               d / "unpinned.log");
  ASSERT_EQ(modula::testing::wait_exit(pid), 0) << modula::testing::slurp(d / "unpinned.log");
  EXPECT_NE(modula::testing::slurp(d / "unpinned.log").find("threads not pinned"), std::string::npos);
  EXPECT_NE(modula::testing::slurp(d / "unpinned.log").find("\"pinned_cpus\":[]"), std::string::npos);
  pid = modula::testing::spawn({MODULA_CLI, "bench", "--quick", "--workloads", "nope"}, d / "bad.log");
  EXPECT_EQ(modula::testing::wait_exit(pid), 2) << modula::testing::slurp(d / "bad.log");
}
#endif

// --write-models (bench/llama_cpp's input): the folders load back as the models the workloads
// time, and reference.json's greedy tokens are what the reloaded model and adapter a0 give.
TEST(Bench, WrittenModelsReloadToTheGreedyReference) {
  modula::testing::TempDir tmp;
  BenchOptions o;
  o.size = Size::Quick;
  write_models(o, tmp / "w");
  const auto ref = json::parse(modula::fs::read_file(tmp / "w/reference.json"));
  ASSERT_EQ(ref.at("adapters").size(), 16u);
  auto model = load_backbone(tmp / "w/model");
  auto prompt = torch::tensor(ref.at("prompt").get<std::vector<int64_t>>()).unsqueeze(0);
  auto greedy = [&] {
    torch::NoGradGuard no_grad;
    model->eval();
    KVCache cache;
    BackboneInput in;
    in.input_ids = prompt;
    in.cache = &cache;
    std::vector<int64_t> out;
    auto next = model->forward(in).logits.select(1, -1).argmax(-1).unsqueeze(1);
    for (size_t s = 0; s < ref.at("greedy").size(); ++s) {
      out.push_back(next.item<int64_t>());
      BackboneInput step;
      step.input_ids = next;
      step.cache = &cache;
      next = model->forward(step).logits.select(1, -1).argmax(-1).unsqueeze(1);
    }
    return out;
  };
  EXPECT_EQ(greedy(), ref.at("greedy").get<std::vector<int64_t>>());
  auto a0 = load_adapter(*model, tmp / "w/adapters/a0", "a0");
  EXPECT_EQ(greedy(), ref.at("greedy_adapter_a0").get<std::vector<int64_t>>());
  EXPECT_NE(ref.at("greedy"), ref.at("greedy_adapter_a0"));  // the adapter changes the model
}
