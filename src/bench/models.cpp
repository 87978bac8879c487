// The benchmark models: a Llama built in code per size, LoRA configs, and the plain /
// single-adapter / mixed-adapter trio that prefill and decode compare.
#include "bench/bench_internal.h"
#include "modula/backbone/registry.h"
#include "modula/bench/bench.h"
#include "modula/composition/mixed.h"
#include "modula/composition/registry.h"
#include "modula/io/hf_config.h"
#include "modula/util/error.h"

namespace modula::bench {
namespace {

constexpr std::string_view kBenchModelsTag = "bench";

}  // namespace

LlamaShape model_shape(Size size) {
  switch (size) {
    case Size::Quick:
      return {64, 128, 2, 4, 256, 256};
    case Size::Cpu:
      return {512, 1376, 4, 8, 8000, 2048};
    case Size::Gpu:
      return {1024, 2816, 16, 16, 32000, 2048};  // the peer benchmark peft_bench.py
  }
  throw_error(kBenchModelsTag, "unknown size");
}

int64_t adapter_rank(Size size) { return size == Size::Quick ? 8 : size == Size::Cpu ? 64 : 16; }

std::shared_ptr<Backbone> bench_llama(const LlamaShape& s, const BenchContext& ctx) {
  nlohmann::json c = {{"architectures", {"LlamaForCausalLM"}},
                      {"model_type", "llama"},
                      {"vocab_size", s.vocab},
                      {"hidden_size", s.hidden},
                      {"intermediate_size", s.intermediate},
                      {"num_hidden_layers", s.layers},
                      {"num_attention_heads", s.heads},
                      {"num_key_value_heads", s.heads},
                      {"hidden_act", "silu"},
                      {"max_position_embeddings", s.max_positions},
                      {"rms_norm_eps", 1e-6},
                      {"rope_theta", 10000.0},
                      {"tie_word_embeddings", false}};
  auto model = create_backbone(io::parse_hf_config(c, "bench model"));
  init_weights(*model, 0.02, ctx.seed);
  model->to(ctx.device, ctx.dtype);
  model->eval();
  return model;
}

nlohmann::json lora_all_linear(int64_t r, double alpha) {
  return {{"peft_type", "LORA"},
          {"r", r},
          {"lora_alpha", alpha},
          {"lora_dropout", 0.0},
          {"init_lora_weights", false},
          {"target_modules", {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}}};
}

std::vector<std::pair<std::string, torch::ScalarType>> stored_variants(const BenchContext& ctx) {
  std::vector<std::pair<std::string, torch::ScalarType>> out = {{"mixed16_bf16", torch::kBFloat16}};
  if (!ctx.gpu()) out.emplace_back("mixed16_int8", torch::kChar);
  return out;
}

AdaptedModels adapted_models(Size size, const BenchContext& ctx, int64_t num_adapters, const nlohmann::json& config) {
  AdaptedModels m;
  m.shape = model_shape(size);
  m.r = adapter_rank(size);
  m.num_adapters = num_adapters;
  const bool lora = config.is_null();
  m.config = lora ? lora_all_linear(m.r, 2.0 * static_cast<double>(m.r)) : config;
  // Same seed: the models have the same base weights.
  m.plain = bench_llama(m.shape, ctx), m.single = bench_llama(m.shape, ctx);
  m.multi = bench_llama(m.shape, ctx), m.reference = bench_llama(m.shape, ctx);
  torch::manual_seed(ctx.seed + 1);
  torch::NoGradGuard no_grad;
  auto added = [&](Backbone& model, const std::string& name) {
    auto a = add_adapter(model, m.config, name);
    if (!lora)
      for (auto& p : a.parameters()) p.normal_(0, 0.02);
    return a;
  };
  added(*m.single, "single");
  std::vector<Adapter> adapters;
  for (int64_t i = 0; i < num_adapters; ++i) {
    adapters.push_back(added(*m.multi, "a" + std::to_string(i)));
    std::vector<torch::Tensor> copies;
    for (const auto& p : adapters.back().parameters()) copies.push_back(p.detach().clone());
    m.adapter_params.push_back(std::move(copies));
  }
  m.mixed = mix_adapters(std::move(adapters));
  if (!lora) return m;
  // The same 16 adapters again, their banks stored in bfloat16 / int8 (serve --adapter-dtype).
  for (const auto& [name, dtype] : stored_variants(ctx)) {
    StoredMix s{name, dtype, bench_llama(m.shape, ctx), {}};
    std::vector<Adapter> copies;
    for (int64_t i = 0; i < num_adapters; ++i) copies.push_back(m.copy_adapter(*s.model, i, "a" + std::to_string(i)));
    s.mixed = mix_adapters(std::move(copies));
    store_banks_as(s.mixed, dtype);
    m.stored.push_back(std::move(s));
  }
  return m;
}

void AdaptedModels::route_rows(int64_t rows) const {
  std::vector<std::string> names;
  for (int64_t i = 0; i < rows; ++i) names.push_back("a" + std::to_string(i % num_adapters));
  set_row_modules(mixed, names);
  for (const auto& s : stored) set_row_modules(s.mixed, names);
}

Adapter AdaptedModels::copy_adapter(Backbone& model, int64_t a, const std::string& name) const {
  auto adapter = add_adapter(model, config, name);
  auto params = adapter.parameters();
  const auto& saved = adapter_params[static_cast<size_t>(a)];
  check(params.size() == saved.size(), kBenchModelsTag, "adapter copy has a different parameter count");
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < params.size(); ++i) params[i].copy_(saved[i]);
  return adapter;
}

torch::Tensor AdaptedModels::per_row_reference(const torch::Tensor& ids) {
  torch::NoGradGuard no_grad;
  const int64_t rows = ids.size(0);
  std::vector<torch::Tensor> logits(static_cast<size_t>(rows));
  for (int64_t a = 0; a < num_adapters && a < rows; ++a) {
    auto adapter = copy_adapter(*reference, a, "reference");
    for (int64_t row = a; row < rows; row += num_adapters) {
      BackboneInput in;
      in.input_ids = ids.slice(0, row, row + 1);
      logits[static_cast<size_t>(row)] = reference->forward(in).logits;
    }
    adapter.remove();
  }
  return torch::cat(logits, 0);
}

}  // namespace modula::bench
