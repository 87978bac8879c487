// Mixture of LoRA experts at Linear sites (MoLoRA, Zadouri et al. 2023; survey §4.2.2):
// each site holds a bank of M LoRAs and a token-level top-k router on the site input,
//
//   y = W x + b + Σ_{m ∈ top-k(x)} g_m(x) · s B_m A_m x
//
// computed in one batched kernel over all M·r ranks (LoraBank::mixed; zero weight outside
// the top k). The router's load-balancing / z-losses are left in its aux_loss.
//
//   auto moes = modula::add_moe_lora(*model, {{"target_modules", {"q_proj", "v_proj"}}},
//                                    modula::MoeLoraOptions(4).r(8).k(2));
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "modula/backbone/backbone.h"
#include "modula/composition/modular_linear.h"
#include "modula/modules/adapter.h"
#include "modula/routing/top_k.h"

namespace modula {

struct MoeLoraOptions {
  explicit MoeLoraOptions(int64_t num_experts) : num_experts_(num_experts) {}
  TORCH_ARG(int64_t, num_experts);  // M LoRA experts per site
  TORCH_ARG(int64_t, r) = 8;
  TORCH_ARG(double, alpha) = 8.0;
  TORCH_ARG(int64_t, k) = 2;  // experts per token
  TORCH_ARG(bool, noisy) = false;
  TORCH_ARG(bool, normalize) = true;
  TORCH_ARG(double, load_balance_coef) = 0.01;
  TORCH_ARG(double, z_loss_coef) = 0.001;
  TORCH_ARG(std::string, name) = "moe_lora";                      // attach name at each site
  TORCH_ARG(std::shared_ptr<RoutingContext>, context) = nullptr;  // padding mask for the losses

 public:  // TORCH_ARG leaves the section private
  // Throws std::invalid_argument naming the bad field.
  void validate() const;
  // The router options for a site with `features` inputs.
  TopKRouterOptions router(int64_t features) const;
};

// One MoLoRA layer for a site with `in` inputs and `out` outputs (B = 0: identity at start).
ModularLinear moe_lora(int64_t in, int64_t out, const MoeLoraOptions& options);

// Attaches moe_lora at every Linear site `targets` selects (PEFT target_modules rules,
// targets.h) under options.name(). Returns the handle (peft_type MODULA_MOE_LORA; its
// modules are the ModularLinear layers, `moe_layer(a.modules[i])` casts one).
Adapter add_moe_lora(Backbone& model, const nlohmann::json& targets, const MoeLoraOptions& options);
std::shared_ptr<ModularLinearImpl> moe_layer(const AttachedModule& m);

}  // namespace modula
