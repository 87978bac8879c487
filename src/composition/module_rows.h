// Registry rows of the module types that are not plain PEFT layouts (registry.cpp holds
// the table): each returns its row with build / load / save.
#pragma once

#include "modula/composition/registry.h"

namespace modula {

// The routing context a module being built shares: its env's, or a fresh one.
inline std::shared_ptr<RoutingContext> context_of(const ModuleEnv& env) {
  return env.context ? env.context : std::make_shared<RoutingContext>();
}

ModuleType sparse_ft_row();   // MODULA_SPARSE_FT: θ + scale·φ written into the weights
ModuleType bitfit_row();      // MODULA_BITFIT: biases only
ModuleType hyper_lora_row();  // MODULA_HYPER_LORA: a hypernetwork generating every site's LoRA
ModuleType fusion_row();      // MODULA_FUSION: AdapterFusion over member adapters
ModuleType moe_ffn_row();     // MODULA_MOE_FFN: MoE-fied or upcycled FFN blocks (moe_ffn_row.cpp)
// MODULA_COMPOSITION: a composition spec with its trained fusions and routers (composition_module.cpp).
ModuleType composition_row();
// MODULA_MOE_LORA (a bank of LoRA experts + top-k router per site, PEFT layout): build from
// Mixtral-named keys.
Adapter moe_lora_build(Backbone& model, const nlohmann::json& config, const ModuleEnv& env);

}  // namespace modula
