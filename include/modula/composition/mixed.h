// Module sets of any type served in one batch, each row routed to its own by name (fixed
// routing by metadata, Algorithm 1 with a FixedRouter; PEFT's `adapter_names` at
// inference, here also in training and for every module type):
//
//   auto mixed = modula::load_mixed(*model, {{"en", "adapters/en-lora"}, {"de", "adapters/de-ia3"},
//                                            {"fr", "adapters/fr-bottleneck"}, {"ja", "adapters/ja-prompt"}});
//   modula::set_row_modules(mixed, {"de", "__base__", "ja"});   // row i uses names[i]
//   auto out = modula::forward_adapted(*model, mixed, {.input_ids = ids});
//
// Per site, one bank per kind of module (algorithm1.h): LoRA → LoraBank (ranks zero-padded,
// alphas/scales per module), (IA)³ → Ia3Bank, block-site modules (bottleneck adapters,
// compositions) → Routed over the members, prompts or prefixes → InputBank (input_bank.h:
// prompt outputs are [B, P + T, ...], InputBankImpl::real_tokens gives [B, T, ...]). A set
// that has no module at a site contributes nothing there; "__base__" rows run the backbone
// alone. Each row equals that row run alone with its own set (tests/composition/test_mixed.cpp).
// DoRA, Poly, MoE and hypernetwork modules cannot be mixed (their routing is their own).
#pragma once

#include <map>

#include "modula/backbone/backbone.h"
#include "modula/composition/spec.h"
#include "modula/modules/adapter.h"
#include "modula/routing/router.h"

namespace modula {

inline const std::string kBaseAdapter = "__base__";
inline const std::string kMixedType = "MODULA_MIXED";
inline const std::string kCompositionSetType = "MODULA_COMPOSITION_SET";

// Mixes attached module sets (routing name = Adapter::name) into one handle named `name`
// (peft_type MODULA_MIXED, config {"modules": [names], "key": ...}); consumes them: their
// linear-site and input modules are stacked into banks, their block-site modules run inside
// the routed composite. Throws std::invalid_argument naming the set and module that cannot
// be mixed, or a repeated/reserved name; the sets are removed on error too.
Adapter mix_adapters(std::vector<Adapter> adapters, const std::string& name = "mixed",
                     std::shared_ptr<RoutingContext> context = nullptr, const std::string& key = "adapter");
// Loads module folders (name, dir) of any type and mixes them.
Adapter load_mixed(Backbone& model, const std::vector<std::pair<std::string, std::string>>& named_dirs,
                   const std::string& name = "mixed", std::shared_ptr<RoutingContext> context = nullptr);

// A composition spec over module folders (spec name → folder) as one module set that
// mix_adapters takes, e.g. a served "model": "stack(lang_de, task_ner)". The members are
// loaded under "<id>_<i>" and composed by apply_spec (stack / parallel / avg over LoRA,
// (IA)³, bottleneck adapters, one prompt); in the mixed handle several LoRAs of the set at
// one site become one LoRA of their summed rank (same delta), (IA)³ vectors their product.
// Throws std::invalid_argument for fuse(…) (no trained weights) and route(…) / moe(…), and
// SpecError / load errors as apply_spec does; nothing stays attached on error.
// The spec checks of composition_set alone (no model): std::invalid_argument naming the node.
void check_composition_set(const SpecNode& spec);
Adapter composition_set(Backbone& model, const SpecNode& spec, const std::map<std::string, std::string>& folders,
                        const std::string& name, const std::string& id);

// Stores the mixed handle's LoRA banks in `dtype` (LoraBankImpl::store_as): bfloat16 halves
// the adapter memory and what a decode step reads per row's adapter (`modula serve
// --adapter-dtype bfloat16`), int8 quarters it. Outputs change by that rounding of the
// adapter weights only.
// Throws std::invalid_argument for a handle that is not mixed or a dtype store_as refuses.
void store_banks_as(const Adapter& mixed, torch::ScalarType dtype);

// Row ids for module-set names ("__base__" -> -1); std::invalid_argument naming an unknown
// name and the known ones.
torch::Tensor row_ids(const Adapter& mixed, const std::vector<std::string>& name_per_row);
// The next forward routes row i to name_per_row[i].
void set_row_modules(const Adapter& mixed, const std::vector<std::string>& name_per_row);

}  // namespace modula
