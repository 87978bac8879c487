// LoRA merging with PEFT's add_weighted_adapter semantics (survey §5.1, parameter
// aggregation): several LoRA adapters loaded on one backbone become one new LoRA adapter.
//
//   linear, ties, dare_linear, dare_ties, magnitude_prune (all ranks equal):
//       A = combine_i(√(w_i s_i) A_i),  B = combine_i(√(w_i s_i) B_i)   (A and B separately)
//   cat:  A = [w_1 s_1 A_1; ...; w_M s_M A_M],  B = [B_1 ... B_M]      (rank Σ r_i; exact)
//   svd (and ties_svd, dare_linear_svd, dare_ties_svd, magnitude_prune_svd):
//       ΔW = combine_i(w_i · s_i B_i A_i),  U S Vᵀ = svd(ΔW),  B = U_r S_r,  A = V_rᵀ
//       (PEFT 0.21's merged factors; its fixtures hold exactly this ΔW's truncation)
// where combine is the task-arithmetic / TIES / DARE / magnitude-prune rule of
// task_vectors.h, s_i is adapter i's scaling at that site (alpha/r, rsLoRA alpha/√r, times
// its set_scale), and the new adapter has r = lora_alpha = new rank (scaling 1) and
// target_modules = the union of the inputs' ("all-linear", a list or a regex when the inputs share
// that form; else the list of the sites they hold).
//
//   auto a = modula::load_adapter(*model, "a", "a"), b = modula::load_adapter(*model, "b", "b");
//   auto m = modula::merge_lora_adapters(*model, {a, b},
//                modula::LoraMergeOptions({0.7, 0.3}).combination_type("ties").density(0.5), "ab");
//   modula::save_adapter(m, "out/ab");   // PEFT loads it
#pragma once

#include <optional>

#include "modula/modules/adapter.h"

namespace modula {

struct LoraMergeOptions {
  explicit LoraMergeOptions(std::vector<double> weights) : weights_(std::move(weights)) {}
  TORCH_ARG(std::vector<double>, weights);                 // one per adapter
  TORCH_ARG(std::string, combination_type) = "svd";        // PEFT's default
  TORCH_ARG(std::optional<double>, density);               // required by the pruning types, in [0, 1]
  TORCH_ARG(std::string, majority_sign_method) = "total";  // "total" or "frequency" (ties types)
  TORCH_ARG(int64_t, svd_rank) = 0;                        // 0: the largest input rank
  TORCH_ARG(std::optional<double>, svd_clamp);             // quantile in (0, 1] clamping U S and Vᵀ
  TORCH_ARG(uint64_t, seed) = 0;                           // DARE's Bernoulli masks

 public:
  // Throws std::invalid_argument naming the field, for `num_adapters` inputs.
  void validate(size_t num_adapters) const;
};

// The combination types add_weighted_adapter accepts.
std::vector<std::string> lora_combination_types();

// Attaches and returns a new LORA adapter `name` merged from `adapters` (all LORA, without
// DoRA, attached to `model`). Leaves the inputs attached and unchanged; disable or remove
// them to run the merged adapter alone. One input is always merged "linear" (PEFT).
Adapter merge_lora_adapters(Backbone& model, const std::vector<Adapter>& adapters, const LoraMergeOptions& options,
                            const std::string& name);

}  // namespace modula
