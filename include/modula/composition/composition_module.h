// A trained composition as one module (peft_type MODULA_COMPOSITION): a composition spec
// applied over member modules, with what it trained itself (the fusions of fuse(…) nodes,
// the learned routers of route(softmax|softmax_token|smear|top<k>, …) / moe(…)). Its folder:
//
//   adapter_config.json        {"peft_type": "MODULA_COMPOSITION", "spec": "route(softmax, a, b)",
//                               "adapters": ["a", "b"], "fusion": {…}}
//   adapter_model.safetensors  "fuse<i>.<site>.<param>"      fusion i (fuse nodes in spec order)
//                              "route<j>.<site>.<param>"     the learned router of route node j
//                                                            (pre-order) at that site
//
// The members are not in the folder: they are loaded first and passed by name
// (ModuleEnv::members), as for MODULA_FUSION.
//
//   auto a = modula::load_module(*model, "out/modules/a", {.name = "a"});
//   auto b = modula::load_module(*model, "out/modules/b", {.name = "b"});
//   auto c = modula::load_module(*model, "out/compose", {.name = "c", .members = {{"a", &a}, {"b", &b}}});
//   auto out = modula::forward_adapted(*model, c, input);    // c.input applies the spec's prompts
//
// The Adapter's state owns the Composition (parameters, set_enabled, remove →
// remove_composition); apply_spec (apply_spec.h) stays the low-level call.
#pragma once

#include "modula/composition/apply_spec.h"
#include "modula/composition/registry.h"

namespace modula {

inline constexpr const char* kCompositionType = "MODULA_COMPOSITION";

// The registry row (registry.cpp's table). Config keys: peft_type, spec (any spec form),
// adapters (the member names; default: the spec's names), name / fusion (ComposeOptions;
// the attach name defaults to the env's name).
ModuleType composition_row();

// The composition's trained tensors under their stable names (see above).
std::vector<std::pair<std::string, torch::Tensor>> composition_tensors(const Composition& composition);
// Writes the folder load_module reads back as MODULA_COMPOSITION (the members are not written).
void save_composition(const Composition& composition, const std::string& dir);
// The handle owning `composition` (its config as save_composition writes it).
Adapter composition_adapter(Composition composition, const std::string& name);
// The composition an Adapter of this type owns; null for other adapters.
const Composition* composition_of(const Adapter& adapter);
// The module names under fuse(…) nodes (they run inside a fusion, frozen).
std::set<std::string> fused_module_names(const SpecNode& spec);

}  // namespace modula
