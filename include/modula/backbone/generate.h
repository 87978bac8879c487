// Autoregressive decoding with a KV cache: greedy or sampling (temperature, top-k,
// top-p), seeded. Tokens are handed to a callback as soon as they are chosen.
//
//   modula::GenerateOptions o;  o.max_new_tokens = 20;  o.temperature = 0.8;  o.seed = 1;
//   auto ids = modula::generate(*model, prompt_ids, o, [](int64_t id) { return true; });
#pragma once

#include <functional>

#include "modula/backbone/backbone.h"

namespace modula {

struct GenerateOptions {
  int64_t max_new_tokens = 32;
  double temperature = 0.0;  // 0 = greedy (argmax)
  int64_t top_k = 0;         // 0 = off
  double top_p = 1.0;        // 1 = off; keep the smallest set with mass >= top_p
  uint64_t seed = 0;
  std::vector<int64_t> stop_ids;  // stop after emitting one of these (e.g. eos)
  // Throws std::invalid_argument naming the bad field.
  void validate() const;
};

// Rewrites the first step's input (prompt/prefix tuning prepend virtual tokens or fill the cache).
using PrepareInput = std::function<void(BackboneInput&)>;

// Returns the new token ids (prompt excluded). `on_token` returns false to stop early.
std::vector<int64_t> generate(Backbone& model, const std::vector<int64_t>& prompt, const GenerateOptions& options,
                              const std::function<bool(int64_t)>& on_token = {}, const PrepareInput& prepare = {});

// Next-token choice from logits [V] (fp32), exposed for tests.
int64_t sample_next(const torch::Tensor& logits, const GenerateOptions& options, torch::Generator& gen);

}  // namespace modula
