// decode: greedy steps with the KV cache (the prompt's prefill untimed, before each call),
// batch 1 and a server-sized batch, with no adapter, one LoRA adapter, and 16 mixed.
#include "bench/bench_internal.h"
#include "modula/util/dtype.h"

namespace modula::bench {
namespace {

constexpr int64_t kDecodeBenchAdapters = 16;

// One greedy decode in progress: the cache and the next input token of every row [B, 1].
struct DecodeBenchState {
  KVCache cache;
  torch::Tensor next;
};

torch::Tensor decode_bench_greedy(const BackboneOutput& out) {
  return out.logits.select(1, -1).argmax(-1).unsqueeze(1);
}

}  // namespace

Variant decode_variant(const std::string& name, Backbone& model, const torch::Tensor& prompt, int64_t steps,
                       std::function<void()> before) {
  auto state = std::make_shared<DecodeBenchState>();
  auto setup = [state, &model, prompt, before] {
    if (before) before();
    state->cache = KVCache();
    BackboneInput in;
    in.input_ids = prompt;
    in.cache = &state->cache;
    state->next = decode_bench_greedy(model.forward(in));
  };
  auto call = [state, &model, steps] {
    for (int64_t s = 0; s < steps; ++s) {
      BackboneInput in;
      in.input_ids = state->next;
      in.cache = &state->cache;
      state->next = decode_bench_greedy(model.forward(in));
    }
  };
  return {name, call, setup};
}

std::vector<Measurement> bench_decode(const BenchContext& ctx) {
  auto m = adapted_models(ctx.size, ctx, kDecodeBenchAdapters);
  // peft_bench.py: 32-token prompts, 64 new tokens, batch 32 on the GPU.
  const int64_t prompt = ctx.quick() ? 4 : ctx.gpu() ? 32 : 16, steps = ctx.quick() ? 4 : ctx.gpu() ? 64 : 32;
  const std::vector<int64_t> batches = {1, ctx.gpu() ? 32 : 16};
  torch::NoGradGuard no_grad;
  torch::manual_seed(ctx.seed + 3);
  std::vector<torch::Tensor> prompts;
  for (auto b : batches) prompts.push_back(torch::randint(0, m.shape.vocab, {b, prompt}, ctx.long_options()));

  struct Model {
    std::string name;
    Backbone* model;
    bool mixed;
  };
  std::vector<Model> models = {
      {"none", m.plain.get(), false}, {"single", m.single.get(), false}, {"mixed16", m.multi.get(), true}};
  for (const auto& s : m.stored) models.push_back({s.name, s.model.get(), true});
  std::vector<Variant> variants;
  std::vector<int64_t> batch_of;
  for (size_t b = 0; b < batches.size(); ++b)
    for (const auto& model : models) {
      const int64_t rows = batches[b];
      std::function<void()> route;
      if (model.mixed) route = [&m, rows] { m.route_rows(rows); };
      variants.push_back(decode_variant(model.name, *model.model, prompts[b], steps, route));
      batch_of.push_back(rows);
    }
  auto t = time_round_robin(variants, ctx);

  std::vector<Measurement> out;
  for (size_t i = 0; i < variants.size(); ++i) {
    const int64_t rows = batch_of[i];
    const bool adapted = variants[i].name != "none";
    double flops = 0;
    for (int64_t s = 0; s < steps; ++s) flops += forward_flops(m.shape, rows, 1, prompt + s, adapted ? m.r : 0);
    const std::string shape = "batch " + std::to_string(rows) + ", " + std::to_string(steps) + " steps after " +
                              std::to_string(prompt) + " prompt tokens";
    out.push_back(measurement(ctx, "decode", variants[i].name, shape, t[i], static_cast<double>(rows * steps), flops));
    out.back().note = (adapted ? "LoRA r" + std::to_string(m.r) + " all-linear" : std::string("base model")) +
                      "; greedy, KV cache; FLOPs: projections, attention over the cache, LM head per step";
    if (variants[i].name.rfind("mixed16", 0) == 0)
      out.back().note += rows == 1 ? "; the one row uses adapter a0 of the 16-adapter bank"
                                   : "; row i uses adapter i % 16 (mixed.h banks)";
    for (const auto& s : m.stored)
      if (variants[i].name == s.name) out.back().note += ", stored in " + dtype_name(s.dtype) + " (store_banks_as)";
  }
  compare_to(out, "single");
  return out;
}

}  // namespace modula::bench
