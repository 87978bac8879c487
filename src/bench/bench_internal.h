// What the bench workloads share: the run context, round-robin timing, analytic FLOP
// counts of the Llama architecture, the benchmark models and their adapters.
#pragma once

#include <torch/torch.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "modula/backbone/backbone.h"
#include "modula/bench/bench.h"
#include "modula/modules/adapter.h"
#include "modula/util/threads.h"

namespace modula::bench {

// What every workload reads.
struct BenchContext {
  Size size = Size::Cpu;
  torch::Device device = torch::kCPU;
  torch::ScalarType dtype = torch::kFloat32;
  int64_t iters = 10, warmup = 2;
  int threads = 1;
  std::shared_ptr<PinnedThreads> pinned;  // null: threads not pinned; applied after every warm-up
  uint64_t seed = 0;
  bool quick() const { return size == Size::Quick; }
  bool gpu() const { return size == Size::Gpu; }
  torch::TensorOptions float_options() const { return torch::dtype(dtype).device(device); }
  torch::TensorOptions long_options() const { return torch::dtype(torch::kInt64).device(device); }
};

// ---- timing.cpp
// One variant of a workload: `setup` (optional, untimed) runs before every sample of `call`
// (the timed work), e.g. a decode's prefill into a fresh cache.
struct Variant {
  std::string name;
  std::function<void()> call;
  std::function<void()> setup = {};  // a variant with one is timed one call per sample
};

struct Timing {
  std::vector<double> seconds;  // per call, one entry per timed sample, in the order run
  double median = 0, min = 0, max = 0, p10 = 0, p90 = 0;
  int64_t calls_per_sample = 1;
};

// Order statistics of samples (linear interpolation between ranks); empty -> zeros.
Timing summarize(std::vector<double> seconds);
// warmup untimed rounds, then iters timed rounds, each round one sample of every variant in
// order (round-robin); CUDA synchronised before and after each sample. A sample of a variant
// without setup repeats its call until the sample spans kMinSampleSeconds (the count from its
// fastest warm-up call): sub-millisecond calls are timed in the steady state, not in the
// hand-off from the variant before (another thread pool waking or spinning down).
std::vector<Timing> time_round_robin(const std::vector<Variant>& variants, const BenchContext& ctx);

// A measurement from its timing: tokens/s and GFLOP/s from the median.
Measurement measurement(const BenchContext& ctx, const std::string& workload, const std::string& variant,
                        const std::string& shape, const Timing& t, double tokens, double flops);
// Sets vs_baseline of every measurement against the one of variant `baseline` with the same
// workload and shape (none when that variant is absent).
void compare_to(std::vector<Measurement>& results, const std::string& baseline);

// ---- flops.cpp: matmul FLOPs (2·m·n·k) of the Llama architecture, elementwise work not counted.
struct LlamaShape {
  int64_t hidden = 0, intermediate = 0, layers = 0, heads = 0, vocab = 0, max_positions = 0;
  int64_t head_dim() const { return hidden / heads; }
};
// Per token, all layers: q/k/v/o and gate/up/down projections.
double linear_flops_per_token(const LlamaShape& s);
// Per token, all layers: a rank-r LoRA on every one of those projections (2·r·(in + out) each).
double lora_flops_per_token(const LlamaShape& s, int64_t r);
// One row, all layers: scores q·kᵀ and the weighted sum of v for `queries` new tokens against
// `keys` cached + new positions (the dense kernel computes the whole masked square).
double attention_flops(const LlamaShape& s, int64_t queries, int64_t keys);
// Per token: the LM head.
double lm_head_flops_per_token(const LlamaShape& s);
// A forward of `rows` x `tokens` new tokens after `past` cached ones, LoRA rank r (0 = none);
// logits at every new position.
double forward_flops(const LlamaShape& s, int64_t rows, int64_t tokens, int64_t past, int64_t r);
// A LoRA training step: forward + backward. Backward: the frozen projections and the LM
// head compute input gradients only (1× forward), LoRA and attention both input and weight
// / both operand gradients (2× forward). Optimizer work is elementwise: not counted.
double train_step_flops(const LlamaShape& s, int64_t rows, int64_t tokens, int64_t r);
// The SwiGLU FFN layer forward on `tokens` tokens: router H·E (when experts > 0) plus k
// experts (or the dense FFN) of `intermediate` neurons: 3 matmuls H x I.
double ffn_flops(int64_t tokens, int64_t hidden, int64_t intermediate, int64_t active, int64_t experts);

// ---- models.cpp
// The benchmark Llama of each size (quick: hidden 64, 2 layers; cpu: hidden 512, 4 layers,
// vocab 8000; gpu: peft_bench.py's hidden 1024, 16 layers, vocab 32000).
LlamaShape model_shape(Size size);
// create_backbone + init_weights(0.02, seed), moved to ctx's device and dtype, eval mode.
std::shared_ptr<Backbone> bench_llama(const LlamaShape& s, const BenchContext& ctx);
// PEFT LoRA config on every projection (q/k/v/o, gate/up/down), B random (init_lora_weights
// false) so that adapters differ and the delta is not zero.
nlohmann::json lora_all_linear(int64_t r, double alpha);

// The storage dtypes the mixed variants are also timed in (store_as / store_banks_as), with
// their variant names: "mixed16_bf16", and at CPU sizes "mixed16_int8" (the int8 kernels are
// CPU code).
std::vector<std::pair<std::string, torch::ScalarType>> stored_variants(const BenchContext& ctx);

// The same adapters mixed in another model whose LoRA banks are stored in `dtype`
// (store_banks_as: serve --adapter-dtype), timed as variant `name`.
struct StoredMix {
  std::string name;  // "mixed16_bf16", "mixed16_int8"
  torch::ScalarType dtype;
  std::shared_ptr<Backbone> model;
  Adapter mixed;
};

// The models prefill, decode and bottleneck compare, same base weights: `plain` (no
// adapter), `single` (one adapter), `multi` (num_adapters adapters mixed into one batch,
// mixed.h), for LoRA `stored`: the same adapters mixed with banks stored in bfloat16 and
// (CPU sizes: the int8 kernels are CPU code) int8; empty for other adapters.
struct AdaptedModels {
  LlamaShape shape;
  int64_t r = 0, num_adapters = 0;
  nlohmann::json config;
  std::shared_ptr<Backbone> plain, single, multi, reference;
  Adapter mixed;
  std::vector<StoredMix> stored;
  std::vector<std::vector<torch::Tensor>> adapter_params;  // each adapter's parameters, kept for the reference
  // Adapter a (its saved parameters) added to `model` as `name`.
  Adapter copy_adapter(Backbone& model, int64_t a, const std::string& name) const;
  // Routes row i of the next `multi` (and `stored` models') forwards to adapter i % num_adapters.
  void route_rows(int64_t rows) const;
  // The logits of each row of ids [B, T] computed by a model carrying only that row's
  // adapter (row i: adapter i % num_adapters), concatenated [B, T, V].
  torch::Tensor per_row_reference(const torch::Tensor& ids);
};
// config null: LoRA r adapter_rank(size), alpha 2r, all-linear (lora_all_linear). Another
// config: every adapter parameter drawn from N(0, 0.02²) (a fresh bottleneck adapter's
// up-projection is zero: every adapter would be the identity).
AdaptedModels adapted_models(Size size, const BenchContext& ctx, int64_t num_adapters,
                             const nlohmann::json& config = nullptr);
// LoRA rank of the prefill / decode / lora_only adapters (cpu: 64, the issue's "LoRA ≥ 10%
// of the work" size; gpu: 16 as peft_bench.py; quick: 8).
int64_t adapter_rank(Size size);

// ---- workloads_*.cpp
std::vector<Measurement> bench_train_lora(const BenchContext& ctx);
std::vector<Measurement> bench_prefill(const BenchContext& ctx);
std::vector<Measurement> bench_lora_only(const BenchContext& ctx);
std::vector<Measurement> bench_decode(const BenchContext& ctx);
std::vector<Measurement> bench_moe(const BenchContext& ctx);
std::vector<Measurement> bench_projections(const BenchContext& ctx);
std::vector<Measurement> bench_bottleneck(const BenchContext& ctx);

// workloads_decode.cpp: a greedy decode of `steps` steps on `model` as a Variant; its setup
// runs `before` (e.g. the rows' routing), then prefills `prompt` [B, T] into a fresh KV cache.
Variant decode_variant(const std::string& name, Backbone& model, const torch::Tensor& prompt, int64_t steps,
                       std::function<void()> before = {});

// "16x64" style shape text.
std::string dims(int64_t a, int64_t b);

}  // namespace modula::bench
