// bottleneck: the Llama with Houlsby bottleneck adapters (after the attention and the
// feed-forward block, H/16 units, SiLU): no adapter, one adapter, 16 adapters mixed in one
// batch (row i: adapter i % 16; the rows read their adapters' weights through gathered
// matmuls, aggregation/bottleneck_batch.h), prefill-shaped and decode-shaped.
#include "bench/bench_internal.h"
#include "modula/modules/bottleneck.h"

namespace modula::bench {
namespace {

constexpr int64_t kBottleneckBenchAdapters = 16;

// Two sites per layer, each down (H -> m) and up (m -> H): 2 · 2 · 2·H·m FLOPs per token and layer.
double bottleneck_flops_per_token(const LlamaShape& s, int64_t m) {
  return 8.0 * static_cast<double>(s.hidden) * static_cast<double>(m) * static_cast<double>(s.layers);
}

}  // namespace

std::vector<Measurement> bench_bottleneck(const BenchContext& ctx) {
  const nlohmann::json config = {{"peft_type", "MODULA_BOTTLENECK"}, {"config", "houlsby"}};
  auto m = adapted_models(ctx.size, ctx, kBottleneckBenchAdapters, config);
  const int64_t units =
      BottleneckOptions(bottleneck_preset("houlsby").defaults).features(m.shape.hidden).bottleneck_size();
  const int64_t rows = ctx.gpu() ? 32 : 16, tokens = ctx.quick() ? 4 : ctx.gpu() ? 256 : 64;
  const int64_t prompt = ctx.quick() ? 4 : ctx.gpu() ? 32 : 16, steps = ctx.quick() ? 4 : ctx.gpu() ? 64 : 32;
  torch::manual_seed(ctx.seed + 5);
  auto ids = torch::randint(0, m.shape.vocab, {rows, tokens}, ctx.long_options());
  auto prompt_ids = ids.slice(1, 0, prompt);
  torch::NoGradGuard no_grad;
  BackboneInput in;
  in.input_ids = ids;
  const std::function<void()> route = [&m, rows] { m.route_rows(rows); };
  const std::vector<std::pair<std::string, Backbone*>> models = {
      {"none", m.plain.get()}, {"single", m.single.get()}, {"mixed16", m.multi.get()}};
  std::vector<Variant> variants;
  for (const auto& [name, model] : models) {
    auto* net = model;
    variants.push_back({name, [net, &in] { net->forward(in); }, name == "mixed16" ? route : nullptr});
  }
  for (const auto& [name, model] : models)
    variants.push_back(decode_variant(name, *model, prompt_ids, steps, name == "mixed16" ? route : nullptr));
  auto t = time_round_robin(variants, ctx);

  std::vector<Measurement> out;
  const double per_token = bottleneck_flops_per_token(m.shape, units);
  const std::string adapters = "Houlsby bottleneck adapters (" + std::to_string(units) + " units, SiLU, 2 per layer)";
  for (size_t i = 0; i < variants.size(); ++i) {
    const bool prefill = i < models.size(), adapted = variants[i].name != "none";
    double flops = 0, n = 0;
    if (prefill) {
      n = static_cast<double>(rows * tokens);
      flops = forward_flops(m.shape, rows, tokens, 0, 0) + (adapted ? n * per_token : 0);
    } else {
      n = static_cast<double>(rows * steps);
      for (int64_t s = 0; s < steps; ++s)
        flops += forward_flops(m.shape, rows, 1, prompt + s, 0) + (adapted ? static_cast<double>(rows) * per_token : 0);
    }
    const std::string shape = prefill ? dims(rows, tokens) + " tokens"
                                      : "batch " + std::to_string(rows) + ", " + std::to_string(steps) +
                                            " steps after " + std::to_string(prompt) + " prompt tokens";
    out.push_back(measurement(ctx, "bottleneck", variants[i].name, shape, t[i], n, flops));
    out.back().note = (adapted ? adapters : std::string("base model")) +
                      (prefill ? "; one forward, logits at every position" : "; greedy decode with the KV cache");
    if (variants[i].name == "mixed16") out.back().note += "; row i uses adapter i % 16";
  }
  // The mixed prefill against each row alone with its own adapter.
  route();
  auto mixed = m.multi->forward(in).logits.to(torch::kFloat32);
  out[2].error = (mixed - m.per_row_reference(ids).to(torch::kFloat32)).abs().max().item<double>();
  out[2].reference = "each row alone with its own adapter (max abs diff of logits)";
  compare_to(out, "single");
  return out;
}

}  // namespace modula::bench
