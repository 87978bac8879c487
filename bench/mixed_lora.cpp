// Mixed-adapter batch throughput: a batch whose rows use 16 different LoRA adapters
// (one ModularLinear per site, gather + bmm) against the same batch with one LoRA adapter
// (the plain LoRA site module), on a tiny Llama (hidden 256, 4 layers, r 8 on q/k/v/o).
//
//   bench_mixed_lora [--batch 16] [--seq 64] [--adapters 16] [--iters 20] [--threads 0]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>

#include "modula/backbone/registry.h"
#include "modula/composition/mixed.h"
#include "modula/composition/registry.h"
#include "modula/io/hf_config.h"

using namespace modula;
using json = nlohmann::json;

namespace {

std::shared_ptr<Backbone> tiny_llama() {
  auto c = io::load_hf_config(std::string(MODULA_FIXTURES) + "/hf/models/llama");
  c.hidden_size = 256;
  c.intermediate_size = 688;
  c.num_hidden_layers = 4;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 4;
  c.head_dim = 64;
  c.vocab_size = 1000;
  auto model = create_backbone(c);
  init_weights(*model, 0.02, 0);
  model->eval();
  return model;
}

json lora_config() {
  return {{"peft_type", "LORA"},
          {"r", 8},
          {"lora_alpha", 16},
          {"init_lora_weights", false},
          {"target_modules", {"q_proj", "k_proj", "v_proj", "o_proj"}}};
}

// Median seconds of each of two calls, interleaved (a, b, a, b, ...) so that load from
// other processes falls on both alike; 3 warm-up rounds first.
std::pair<double, double> median_seconds(const std::function<void()>& a, const std::function<void()>& b,
                                         int64_t iters) {
  auto time = [](const std::function<void()>& f) {
    auto start = std::chrono::steady_clock::now();
    f();
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  };
  for (int i = 0; i < 3; ++i) a(), b();
  std::vector<double> ta, tb;
  for (int64_t i = 0; i < iters; ++i) {
    ta.push_back(time(a));
    tb.push_back(time(b));
  }
  std::sort(ta.begin(), ta.end());
  std::sort(tb.begin(), tb.end());
  return {ta[ta.size() / 2], tb[tb.size() / 2]};
}

int64_t arg(int argc, char** argv, const char* name, int64_t fallback) {
  for (int i = 1; i + 1 < argc; ++i)
    if (!std::strcmp(argv[i], name)) return std::stoll(argv[i + 1]);
  return fallback;
}

}  // namespace

int main(int argc, char** argv) {
  const int64_t B = arg(argc, argv, "--batch", 16), T = arg(argc, argv, "--seq", 64);
  const int64_t M = arg(argc, argv, "--adapters", 16), iters = arg(argc, argv, "--iters", 20);
  if (auto threads = arg(argc, argv, "--threads", 0)) torch::set_num_threads(static_cast<int>(threads));
  torch::manual_seed(0);
  torch::NoGradGuard no_grad;
  BackboneInput in;
  in.input_ids = torch::randint(0, 1000, {B, T}, torch::kLong);
  in.attention_mask = torch::ones({B, T}, torch::kLong);
  auto tokens = static_cast<double>(B * T);

  auto plain = tiny_llama(), single = tiny_llama(), multi = tiny_llama();  // same seed: same weights
  add_adapter(*single, lora_config(), "single");
  std::vector<Adapter> adapters;
  for (int64_t m = 0; m < M; ++m) adapters.push_back(add_adapter(*multi, lora_config(), "a" + std::to_string(m)));
  auto mixed = mix_adapters(std::move(adapters));
  std::vector<std::string> per_row;
  for (int64_t n = 0; n < B; ++n) per_row.push_back("a" + std::to_string(n % M));
  set_row_modules(mixed, per_row);

  auto [one, many] = median_seconds([&] { single->forward(in); }, [&] { multi->forward(in); }, iters);
  auto base = median_seconds([&] { plain->forward(in); }, [&] { single->forward(in); }, iters / 2 + 1).first;

  std::printf("tiny llama: hidden 256, 4 layers, batch %lld x seq %lld, LoRA r 8 on q/k/v/o, %d threads\n",
              static_cast<long long>(B), static_cast<long long>(T), torch::get_num_threads());
  std::printf("base model          %10.0f tokens/s\n", tokens / base);
  std::printf("1 adapter (LoRA)    %10.0f tokens/s\n", tokens / one);
  std::printf("%lld adapters (mixed) %9.0f tokens/s\n", static_cast<long long>(M), tokens / many);
  std::printf("mixed / single throughput: %.2fx\n", one / many);
  return 0;
}
