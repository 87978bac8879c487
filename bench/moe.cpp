// MoE feed-forward throughput against the dense FFN it comes from (SwiGLU, hidden 512,
// intermediate 2048, tokens 4096): the dense FFN, its MoE-fied version (8 neuron groups)
// with all 8 / 2 groups active, and an upcycled Mixtral-style layer (8 full experts, top-2).
// Each line: median seconds per forward and the ratio to the dense FFN.
//
//   bench_moe [--tokens 4096] [--hidden 512] [--intermediate 2048] [--iters 10] [--threads 0]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>

#include "modula/composition/moe_upcycle.h"
#include "modula/composition/moefication.h"

using namespace modula;

namespace {

// Median seconds of each call, run round-robin (a, b, c, a, b, c, ...) so that load from
// other processes falls on all alike; 2 warm-up rounds first.
std::vector<double> median_seconds(const std::vector<std::function<void()>>& calls, int64_t iters) {
  for (int i = 0; i < 2; ++i)
    for (auto& f : calls) f();
  std::vector<std::vector<double>> t(calls.size());
  for (int64_t i = 0; i < iters; ++i)
    for (size_t c = 0; c < calls.size(); ++c) {
      auto start = std::chrono::steady_clock::now();
      calls[c]();
      t[c].push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    }
  std::vector<double> medians;
  for (auto& v : t) {
    std::sort(v.begin(), v.end());
    medians.push_back(v[v.size() / 2]);
  }
  return medians;
}

torch::Tensor dense_forward(const DenseFfn& f, const torch::Tensor& x) {
  namespace F = torch::nn::functional;
  return F::linear(torch::silu(F::linear(x, f.w_gate)) * F::linear(x, f.w_up), f.w_down);
}

}  // namespace

int main(int argc, char** argv) {
  int64_t tokens = 4096, H = 512, I = 2048, iters = 10, threads = 0;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string a = argv[i];
    int64_t v = std::stoll(argv[i + 1]);
    if (a == "--tokens")
      tokens = v;
    else if (a == "--hidden")
      H = v;
    else if (a == "--intermediate")
      I = v;
    else if (a == "--iters")
      iters = v;
    else if (a == "--threads")
      threads = v;
    else {
      std::fprintf(stderr, "unknown option %s\n", a.c_str());
      return 2;
    }
  }
  if (threads > 0) torch::set_num_threads(static_cast<int>(threads));
  torch::manual_seed(0);
  torch::NoGradGuard no_grad;
  DenseFfn ffn;
  ffn.gated = true;
  ffn.activation = "silu";
  ffn.w_gate = torch::randn({I, H}) / std::sqrt(static_cast<double>(H));
  ffn.w_up = torch::randn({I, H}) / std::sqrt(static_cast<double>(H));
  ffn.w_down = torch::randn({H, I}) / std::sqrt(static_cast<double>(I));
  auto x = torch::randn({1, tokens, H});

  std::printf("tokens %lld, hidden %lld, intermediate %lld, threads %d\n", static_cast<long long>(tokens),
              static_cast<long long>(H), static_cast<long long>(I), torch::get_num_threads());
  auto all = moefy_ffn(ffn, MoefyOptions(8).k(8).router_distillation_coef(0));
  auto top2 = moefy_ffn(ffn, MoefyOptions(8).k(2).router_distillation_coef(0));
  auto up = upcycle_ffn(ffn, UpcycleOptions(8).k(2));
  auto capped = upcycle_ffn(ffn, UpcycleOptions(8).k(2).dropless(false).capacity_factor(1.0));
  for (auto* m : {&all, &top2, &up, &capped}) (*m)->eval();
  auto reference = dense_forward(ffn, x);
  std::printf("max |MoE-fied top-8 - dense| = %.2e, max |upcycled top-2 - dense| = %.2e\n",
              (all->forward(x) - reference).abs().max().item<double>(),
              (up->forward(x) - reference).abs().max().item<double>());
  const char* names[] = {"dense FFN", "MoE-fied, 8 groups, top-8", "MoE-fied, 8 groups, top-2",
                         "upcycled, 8 experts, top-2", "upcycled, top-2, capacity 1.0"};
  auto t = median_seconds({[&] { dense_forward(ffn, x); }, [&] { all->forward(x); }, [&] { top2->forward(x); },
                           [&] { up->forward(x); }, [&] { capped->forward(x); }},
                          iters);
  for (size_t i = 0; i < t.size(); ++i) std::printf("%-32s %8.4f s  %5.2fx dense\n", names[i], t[i], t[i] / t[0]);
  return 0;
}
