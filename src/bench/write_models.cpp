// modula bench --write-models: the prefill / decode benchmark's Llama and its 16 LoRA
// adapters as folders another engine can load (bench/llama_cpp converts them to GGUF), with
// modula's greedy continuation of a fixed prompt, so the peer can show it runs the same model.
#include "bench/bench_internal.h"
#include "modula/backbone/registry.h"
#include "modula/composition/registry.h"
#include "modula/util/fs.h"

namespace modula::bench {
namespace {

constexpr int64_t kWrittenAdapters = 16;

// Greedy continuation of ids [1, T] for `steps` tokens (KV cache, as the decode workload).
std::vector<int64_t> greedy(Backbone& model, const torch::Tensor& ids, int64_t steps) {
  torch::NoGradGuard no_grad;
  KVCache cache;
  BackboneInput in;
  in.input_ids = ids;
  in.cache = &cache;
  auto next = model.forward(in).logits.select(1, -1).argmax(-1).unsqueeze(1);
  std::vector<int64_t> out;
  for (int64_t s = 0; s < steps; ++s) {
    out.push_back(next.item<int64_t>());
    BackboneInput step;
    step.input_ids = next;
    step.cache = &cache;
    next = model.forward(step).logits.select(1, -1).argmax(-1).unsqueeze(1);
  }
  return out;
}

std::vector<int64_t> to_vector(const torch::Tensor& t) {
  auto c = t.to(torch::kCPU).contiguous();
  return std::vector<int64_t>(c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel());
}

}  // namespace

void write_models(const BenchOptions& options, const std::string& dir) {
  options.validate();
  BenchContext ctx;
  ctx.size = options.size;
  ctx.seed = options.seed;
  torch::manual_seed(options.seed);  // as run_bench does before each workload
  auto m = adapted_models(options.size, ctx, kWrittenAdapters);
  save_backbone(*m.plain, fs::join(dir, "model"));
  torch::NoGradGuard no_grad;
  nlohmann::json adapters = nlohmann::json::array();
  torch::manual_seed(options.seed + 3);
  auto prompt = torch::randint(0, m.shape.vocab, {1, 16}, ctx.long_options());
  const int64_t steps = 32;
  nlohmann::json greedy_with = nlohmann::json::array();
  for (int64_t a = 0; a < kWrittenAdapters; ++a) {
    auto adapter = add_adapter(*m.reference, m.config, "written");
    auto params = adapter.parameters();
    const auto& saved = m.adapter_params[static_cast<size_t>(a)];
    for (size_t i = 0; i < params.size(); ++i) params[i].copy_(saved[i]);
    const std::string folder = fs::join(dir, "adapters/a" + std::to_string(a));
    save_adapter(adapter, folder);
    adapters.push_back(folder);
    if (a == 0) greedy_with = greedy(*m.reference, prompt, steps);
    adapter.remove();
  }
  const nlohmann::json reference = {{"prompt", to_vector(prompt[0])},
                                    {"greedy", greedy(*m.plain, prompt, steps)},
                                    {"greedy_adapter_a0", greedy_with},
                                    {"adapters", adapters},
                                    {"lora_rank", m.r},
                                    {"seed", options.seed}};
  fs::write_file(fs::join(dir, "reference.json"), reference.dump(2) + "\n");
}

}  // namespace modula::bench
