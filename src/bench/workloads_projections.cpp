// projections: the projections that read one input — q/k/v of attention, gate/up of the
// SwiGLU FFN — as one GEMM over their packed weights (project(), fused_linear.h) against
// one GEMM per projection, at the benchmark model's layer sizes, prefill- and decode-shaped.
#include "bench/bench_internal.h"
#include "modula/backbone/fused_linear.h"

namespace modula::bench {
namespace {

// One layer's q/k/v and gate/up sites, on ctx's device and dtype.
struct LayerSites {
  std::vector<Linear> attention, ffn;
  LayerSites(const LlamaShape& s, const BenchContext& ctx) {
    for (int i = 0; i < 3; ++i) attention.push_back(Linear(LinearOptions(s.hidden, s.hidden).bias(false)));
    for (int i = 0; i < 2; ++i) ffn.push_back(Linear(LinearOptions(s.hidden, s.intermediate).bias(false)));
    for (auto& l : attention) l->to(ctx.device, ctx.dtype);
    for (auto& l : ffn) l->to(ctx.device, ctx.dtype);
  }
  static std::vector<LinearImpl*> ptrs(std::vector<Linear>& ls) {
    std::vector<LinearImpl*> out;
    for (auto& l : ls) out.push_back(l.get());
    return out;
  }
  std::vector<torch::Tensor> fused(const torch::Tensor& x) {
    auto ys = project(ptrs(attention), x);
    for (auto& y : project(ptrs(ffn), x)) ys.push_back(y);
    return ys;
  }
  std::vector<torch::Tensor> separate(const torch::Tensor& x) const {
    std::vector<torch::Tensor> ys;
    for (const auto& l : attention) ys.push_back(l->base_forward(x));
    for (const auto& l : ffn) ys.push_back(l->base_forward(x));
    return ys;
  }
};

}  // namespace

std::vector<Measurement> bench_projections(const BenchContext& ctx) {
  const auto s = model_shape(ctx.size);
  torch::NoGradGuard no_grad;
  torch::manual_seed(ctx.seed + 6);
  LayerSites sites(s, ctx);
  sites.fused(torch::zeros({1, 1, s.hidden}, ctx.float_options()));  // packs the weights once
  const std::vector<std::pair<int64_t, int64_t>> shapes = {{ctx.gpu() ? 32 : 16, ctx.quick() ? 4
                                                                                 : ctx.gpu() ? 256
                                                                                             : 64},
                                                           {ctx.gpu() ? 32 : 16, 1},
                                                           {1, 1}};
  std::vector<torch::Tensor> inputs;
  for (auto [rows, tokens] : shapes) inputs.push_back(torch::randn({rows, tokens, s.hidden}, ctx.float_options()));
  std::vector<Variant> variants;
  for (const auto& x : inputs) {
    variants.push_back({"separate", [&sites, &x] { sites.separate(x); }});
    variants.push_back({"fused", [&sites, &x] { sites.fused(x); }});
  }
  auto t = time_round_robin(variants, ctx);

  std::vector<Measurement> out;
  const auto h = static_cast<double>(s.hidden), ffn = static_cast<double>(s.intermediate);
  for (size_t i = 0; i < variants.size(); ++i) {
    const auto [rows, tokens] = shapes[i / 2];
    const auto n = static_cast<double>(rows * tokens);
    out.push_back(measurement(ctx, "projections", variants[i].name, dims(rows, tokens) + " tokens", t[i], n,
                              2 * n * h * (3 * h + 2 * ffn)));
    out.back().note = variants[i].name == "fused"
                          ? "one GEMM for q/k/v, one for gate/up, over the packed weights (project())"
                          : "five GEMMs, one per projection";
    out.back().note += "; hidden " + std::to_string(s.hidden) + ", intermediate " + std::to_string(s.intermediate);
    if (variants[i].name != "fused") continue;
    double error = 0;
    auto fused = sites.fused(inputs[i / 2]), separate = sites.separate(inputs[i / 2]);
    for (size_t k = 0; k < fused.size(); ++k)
      error = std::max(error, (fused[k] - separate[k]).abs().max().to(torch::kFloat64).item<double>());
    out.back().error = error;
    out.back().reference = "each projection's own GEMM (max abs diff)";
  }
  compare_to(out, "separate");
  return out;
}

}  // namespace modula::bench
