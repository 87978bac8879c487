// Analytic FLOP counts of the Llama architecture for the bench: 2·m·n·k per matmul,
// elementwise work (norms, activations, softmax, residuals, optimizer) not counted.
#include "bench/bench_internal.h"

namespace modula::bench {
namespace {

// Σ over one layer's projections of in·out (q, k, v, o: H x H without GQA; gate, up: H x I; down: I x H).
double flops_projection_weights(const LlamaShape& s) {
  const auto H = static_cast<double>(s.hidden), I = static_cast<double>(s.intermediate);
  return 4 * H * H + 3 * H * I;
}

// Σ over one layer's projections of in + out.
double flops_projection_sides(const LlamaShape& s) {
  const auto H = static_cast<double>(s.hidden), I = static_cast<double>(s.intermediate);
  return 4 * (2 * H) + 3 * (H + I);
}

}  // namespace

double linear_flops_per_token(const LlamaShape& s) {
  return 2 * flops_projection_weights(s) * static_cast<double>(s.layers);
}

double lora_flops_per_token(const LlamaShape& s, int64_t r) {
  return 2 * static_cast<double>(r) * flops_projection_sides(s) * static_cast<double>(s.layers);
}

double attention_flops(const LlamaShape& s, int64_t queries, int64_t keys) {
  // q·kᵀ and p·v: 2 matmuls of heads x [queries, head_dim] x [head_dim, keys], 2·q·k·H each.
  return 4 * static_cast<double>(queries) * static_cast<double>(keys) * static_cast<double>(s.hidden) *
         static_cast<double>(s.layers);
}

double lm_head_flops_per_token(const LlamaShape& s) {
  return 2 * static_cast<double>(s.hidden) * static_cast<double>(s.vocab);
}

double forward_flops(const LlamaShape& s, int64_t rows, int64_t tokens, int64_t past, int64_t r) {
  const double per_token = linear_flops_per_token(s) + lora_flops_per_token(s, r) + lm_head_flops_per_token(s);
  return static_cast<double>(rows) *
         (static_cast<double>(tokens) * per_token + attention_flops(s, tokens, past + tokens));
}

double train_step_flops(const LlamaShape& s, int64_t rows, int64_t tokens, int64_t r) {
  const auto n = static_cast<double>(rows) * static_cast<double>(tokens);
  const double frozen = n * (linear_flops_per_token(s) + lm_head_flops_per_token(s));
  const double trained =
      n * lora_flops_per_token(s, r) + static_cast<double>(rows) * attention_flops(s, tokens, tokens);
  return 2 * frozen + 3 * trained;  // forward + backward (1× for frozen, 2× for trained)
}

double ffn_flops(int64_t tokens, int64_t hidden, int64_t intermediate, int64_t active, int64_t experts) {
  const auto n = static_cast<double>(tokens), H = static_cast<double>(hidden);
  return n * (2 * H * static_cast<double>(experts) +
              static_cast<double>(active) * 3 * 2 * H * static_cast<double>(intermediate));
}

}  // namespace modula::bench
