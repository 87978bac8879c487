// prefill: one forward over a batch of prompts (logits at every position) with no adapter,
// one LoRA adapter, and 16 LoRA adapters mixed in one batch (row i uses adapter i % 16).
#include <cstdio>

#include "bench/bench_internal.h"
#include "modula/util/dtype.h"

namespace modula::bench {
namespace {

constexpr int64_t kPrefillBenchAdapters = 16;

std::string prefill_bench_percent(double part, double whole) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f%%", 100.0 * part / whole);
  return buf;
}

}  // namespace

std::vector<Measurement> bench_prefill(const BenchContext& ctx) {
  auto m = adapted_models(ctx.size, ctx, kPrefillBenchAdapters);
  // peft_bench.py prefills 32 x 256 on the GPU; the CPU shape is 16 x 64.
  const int64_t rows = ctx.gpu() ? 32 : 16, tokens = ctx.quick() ? 4 : ctx.gpu() ? 256 : 64;
  torch::manual_seed(ctx.seed + 2);
  BackboneInput in;
  in.input_ids = torch::randint(0, m.shape.vocab, {rows, tokens}, ctx.long_options());
  torch::NoGradGuard no_grad;
  m.route_rows(rows);
  std::vector<Variant> variants = {{"none", [&] { m.plain->forward(in); }},
                                   {"single", [&] { m.single->forward(in); }},
                                   {"mixed16", [&] { m.multi->forward(in); }}};
  for (const auto& s : m.stored) variants.push_back({s.name, [&s, &in] { s.model->forward(in); }});
  auto t = time_round_robin(variants, ctx);

  const std::string shape = dims(rows, tokens) + " tokens";
  const double lora = static_cast<double>(rows * tokens) * lora_flops_per_token(m.shape, m.r);
  const double with_lora = forward_flops(m.shape, rows, tokens, 0, m.r);
  const std::string adapters =
      "LoRA r" + std::to_string(m.r) + " all-linear (LoRA " + prefill_bench_percent(lora, with_lora) + " of the FLOPs)";
  std::vector<Measurement> out;
  for (size_t i = 0; i < variants.size(); ++i) {
    const bool adapted = i > 0;
    out.push_back(measurement(ctx, "prefill", variants[i].name, shape, t[i], static_cast<double>(rows * tokens),
                              forward_flops(m.shape, rows, tokens, 0, adapted ? m.r : 0)));
    out.back().note = (adapted ? adapters : std::string("base model")) +
                      "; FLOPs: projections, full T x T attention, LM head at every position";
  }
  out[2].note += "; row i uses adapter i % 16 (mixed.h banks)";
  for (size_t i = 0; i < m.stored.size(); ++i)
    out[3 + i].note +=
        "; row i uses adapter i % 16, the banks stored in " + dtype_name(m.stored[i].dtype) + " (store_banks_as)";
  // The mixed batches against each row run alone with its own adapter (in the model's dtype).
  auto reference = m.per_row_reference(in.input_ids).to(torch::kFloat32);
  for (size_t i = 2; i < out.size(); ++i) {
    auto& model = i == 2 ? m.multi : m.stored[i - 3].model;
    out[i].error = (model->forward(in).logits.to(torch::kFloat32) - reference).abs().max().item<double>();
    out[i].reference = "each row alone with its own adapter (max abs diff of logits)";
  }
  compare_to(out, "single");
  return out;
}

}  // namespace modula::bench
