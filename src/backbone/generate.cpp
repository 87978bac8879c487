#include "modula/backbone/generate.h"

#include <ATen/CPUGeneratorImpl.h>

#include <cmath>

#include "modula/util/error.h"

namespace modula {

void GenerateOptions::validate() const {
  static constexpr std::string_view kTag = "generate";
  if (max_new_tokens < 0) throw_error(kTag, "max_new_tokens must be >= 0");
  if (!(temperature >= 0) || !std::isfinite(temperature))  // NaN would sample from NaN probabilities
    throw_error(kTag, "temperature must be a finite number >= 0 (got " + std::to_string(temperature) + ")");
  if (top_k < 0) throw_error(kTag, "top_k must be >= 0");
  if (!(top_p > 0 && top_p <= 1)) throw_error(kTag, "top_p must be in (0, 1]");
}

int64_t sample_next(const torch::Tensor& logits, const GenerateOptions& o, torch::Generator& gen) {
  auto l = logits.to(torch::kFloat32).cpu();
  if (o.temperature == 0) return l.argmax().item<int64_t>();
  l = l / o.temperature;
  if (o.top_k > 0 && o.top_k < l.size(0)) {
    auto kth = std::get<0>(l.topk(o.top_k)).min();
    l = l.masked_fill(l < kth, -std::numeric_limits<float>::infinity());
  }
  if (o.top_p < 1) {
    // Nucleus sampling (Holtzman et al. 2020): drop tokens outside the top-p mass.
    auto [sorted, index] = l.sort(/*dim=*/0, /*descending=*/true);
    auto cum = sorted.softmax(0).cumsum(0);
    auto drop_sorted = (cum - sorted.softmax(0)) >= o.top_p;  // mass before this token already >= p
    auto drop = torch::zeros_like(drop_sorted).scatter(0, index, drop_sorted);
    l = l.masked_fill(drop, -std::numeric_limits<float>::infinity());
  }
  return torch::multinomial(l.softmax(0), 1, false, gen).item<int64_t>();
}

std::vector<int64_t> generate(Backbone& model, const std::vector<int64_t>& prompt, const GenerateOptions& o,
                              const std::function<bool(int64_t)>& on_token, const PrepareInput& prepare) {
  o.validate();
  if (!model.causal() || model.head() != Head::CausalLM)
    throw_error("generate", "the model has no causal LM head (" + to_string(model.head()) + ")");
  if (prompt.empty()) throw_error("generate", "empty prompt");
  // Positions past max_position_embeddings are untrained (RoPE) or out of range (learned):
  // refuse up front, as the server does, instead of generating garbage or running on.
  const int64_t positions = model.config().max_position_embeddings;
  const auto prompt_len = static_cast<int64_t>(prompt.size());
  if (positions > 0 && o.max_new_tokens > positions - prompt_len)
    throw_error("generate",
                "the prompt (" + std::to_string(prompt_len) + " tokens) plus max_new_tokens (" +
                    std::to_string(o.max_new_tokens) + ") exceeds the model's context of " + std::to_string(positions) +
                    " tokens (max_position_embeddings)" +
                    (prompt_len < positions ? "; generate at most " + std::to_string(positions - prompt_len) + " tokens"
                                            : std::string()));
  torch::NoGradGuard no_grad;
  auto device = model.parameters().front().device();
  torch::Generator gen = at::detail::createCPUGenerator(o.seed);
  KVCache cache;
  auto ids = torch::tensor(prompt, torch::kInt64).view({1, -1}).to(device);
  std::vector<int64_t> out;
  for (int64_t step = 0; step < o.max_new_tokens; ++step) {
    BackboneInput in;
    in.input_ids = ids;
    in.cache = &cache;
    if (step == 0 && prepare) prepare(in);
    auto logits = model.forward(in).logits;
    int64_t next = sample_next(logits[0][-1], o, gen);
    out.push_back(next);
    if (on_token && !on_token(next)) break;
    if (std::find(o.stop_ids.begin(), o.stop_ids.end(), next) != o.stop_ids.end()) break;
    ids = torch::full({1, 1}, next, torch::dtype(torch::kInt64).device(device));
  }
  return out;
}

}  // namespace modula
