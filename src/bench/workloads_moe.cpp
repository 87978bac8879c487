// moe: a SwiGLU MoE FFN layer (moe_ffn.h), forward + backward, top-2 of 8 and top-2 of 32
// experts, against the dense SwiGLU FFN of equal active size (2 x the expert size).
#include <cstdio>

#include "bench/bench_internal.h"
#include "modula/composition/moe_ffn.h"
#include "modula/routing/top_k.h"

namespace modula::bench {
namespace {

constexpr int64_t kMoeBenchTopK = 2;

// SwiGLU: W_down (silu(W_gate x) ⊙ W_up x).
torch::Tensor moe_bench_swiglu(const torch::Tensor& x, const torch::Tensor& gate, const torch::Tensor& up,
                               const torch::Tensor& down) {
  namespace F = torch::nn::functional;
  return F::linear(torch::silu(F::linear(x, gate)) * F::linear(x, up), down);
}

// The routed sum recomputed naively: every expert on every token, weighted by the dense
// routing weights of the layer's last forward (zero for the experts a token did not pick).
torch::Tensor moe_bench_reference(MoeFfnImpl& layer, const torch::Tensor& x) {
  const auto& weights = layer.last_routing.weights;  // [N, T, E]
  auto out = torch::zeros_like(x);
  for (int64_t e = 0; e < layer.options.num_experts(); ++e)
    out += weights.select(-1, e).unsqueeze(-1).to(x.scalar_type()) *
           moe_bench_swiglu(x, layer.w_gate[e], layer.w_up[e], layer.w_down[e]);
  return out;
}

void moe_bench_clear_grads(const std::vector<torch::Tensor>& tensors) {
  for (auto t : tensors)
    if (t.grad().defined()) t.mutable_grad() = torch::Tensor();
}

}  // namespace

std::vector<Measurement> bench_moe(const BenchContext& ctx) {
  const int64_t H = ctx.quick() ? 32 : ctx.gpu() ? 1024 : 512;
  const int64_t expert = ctx.quick() ? 16 : ctx.gpu() ? 1408 : 688;  // 2 experts = the model's intermediate size
  const int64_t rows = ctx.quick() ? 4 : ctx.gpu() ? 8 : 16, tokens = ctx.quick() ? 16 : ctx.gpu() ? 1024 : 128;
  const int64_t dense_size = kMoeBenchTopK * expert;
  torch::manual_seed(ctx.seed + 5);
  auto opts = ctx.float_options();
  auto dense_gate = (torch::randn({dense_size, H}, opts) / std::sqrt(static_cast<double>(H))).requires_grad_();
  auto dense_up = (torch::randn({dense_size, H}, opts) / std::sqrt(static_cast<double>(H))).requires_grad_();
  auto dense_down = (torch::randn({H, dense_size}, opts) / std::sqrt(static_cast<double>(dense_size))).requires_grad_();
  std::vector<MoeFfn> layers;
  for (int64_t experts : {8, 32}) {
    auto router = TopKRouter(TopKRouterOptions(H, experts).k(kMoeBenchTopK).load_balance_coef(0).z_loss_coef(0));
    layers.emplace_back(MoeFfnOptions(H, expert, experts).activation("silu"), router.ptr());
    layers.back()->to(ctx.device, ctx.dtype);
    layers.back()->train();
  }
  auto x = torch::randn({rows, tokens, H}, opts).requires_grad_();
  auto grad_out = torch::randn({rows, tokens, H}, opts);

  std::vector<Variant> variants;
  variants.push_back({"dense", [&] { moe_bench_swiglu(x, dense_gate, dense_up, dense_down).backward(grad_out); },
                      [&] {
                        moe_bench_clear_grads({x, dense_gate, dense_up, dense_down});
                      }});
  for (auto& layer : layers) {
    auto* l = layer.get();
    auto params = l->parameters();
    params.push_back(x);
    variants.push_back({"top2of" + std::to_string(l->options.num_experts()),
                        [l, &x, &grad_out] { l->forward(x).backward(grad_out); },
                        [params] { moe_bench_clear_grads(params); }});
  }
  auto t = time_round_robin(variants, ctx);

  const int64_t n = rows * tokens;
  const std::string shape = dims(rows, tokens) + " tokens, hidden " + std::to_string(H);
  std::vector<Measurement> out;
  out.push_back(
      measurement(ctx, "moe", "dense", shape, t[0], static_cast<double>(n), 3 * ffn_flops(n, H, dense_size, 1, 0)));
  out.back().note = "dense SwiGLU FFN, intermediate " + std::to_string(dense_size) +
                    "; FLOPs = 3x forward (forward + input and weight gradients)";
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < layers.size(); ++i) {
    auto& l = *layers[i];
    const int64_t E = l.options.num_experts();
    out.push_back(measurement(ctx, "moe", variants[i + 1].name, shape, t[i + 1], static_cast<double>(n),
                              3 * ffn_flops(n, H, expert, kMoeBenchTopK, E)));
    auto y = l.forward(x.detach());
    auto reference = moe_bench_reference(l, x.detach());
    auto& m = out.back();
    m.error = (y - reference).abs().max().to(torch::kFloat32).item<double>();
    m.reference = "naive loop: every expert on every token, weighted by the routing (max abs diff)";
    auto load = torch::bincount(l.last_routing.indices.reshape({-1}).cpu(), {}, E).to(torch::kFloat64);
    char balance[64];
    std::snprintf(balance, sizeof balance, "busiest expert %.2fx the mean load",
                  (load.max() / load.mean()).item<double>());
    m.note = std::to_string(E) + " experts of " + std::to_string(expert) + " neurons, top-2 (untrained router), " +
             balance + "; FLOPs = 3x forward (router H x E + 2 experts, 3 matmuls each)";
  }
  compare_to(out, "dense");
  return out;
}

}  // namespace modula::bench
