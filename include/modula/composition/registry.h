// The module registry: one row per module type (adapter_config.json's "peft_type"), each
// with build (fresh modules from a config), load (a folder) and save. Every type loads
// through `load_module` (the CLI's --adapter, a train config's `modules: - path:`), every
// fresh module through `build_module` (`modules: - config:`), and all of them come back
// as the one handle, Adapter (modules/adapter.h).
//
//   LORA (rsLoRA, DoRA, rank/alpha patterns), IA3, PROMPT_TUNING, PREFIX_TUNING, POLY   PEFT
//   MODULA_BOTTLENECK, MODULA_SPARSE_FT, MODULA_BITFIT, MODULA_HYPER_LORA, MODULA_FUSION,
//   MODULA_MOE_LORA, MODULA_MOE_FFN (MoEfication, sparse upcycling)    docs/module-formats.md
//   MODULA_COMPOSITION (a trained composition spec over member modules)  docs/composition.md
//
//   auto a = modula::load_module(*model, "adapters/poly", {.name = "poly", .context = ctx});
//   auto b = modula::build_module(*model, {{"peft_type", "MODULA_MOE_LORA"}, {"num_experts", 4}});
//   modula::save_module(a, "out/poly");
#pragma once

#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "modula/io/peft.h"
#include "modula/modules/adapter.h"
#include "modula/routing/router.h"

namespace modula {

// What building or loading may need besides the config.
struct ModuleEnv {
  std::string name = "default";  // attach name at every site (no dots)
  double scale = 1.0;            // strength (set_scale after loading)
  // Routing metadata for types that route by it (POLY task ids, HYPER_LORA task ids, MoE
  // padding); a fresh one is made when null.
  std::shared_ptr<RoutingContext> context;
  int64_t task = -1;  // HYPER_LORA: the one task all rows use; -1 = per row from context "task"
  // MODULA_FUSION, MODULA_COMPOSITION: the member adapters by name (attached to the same model).
  std::map<std::string, const Adapter*> members;
};

struct ModuleType {
  std::string peft_type;
  std::string summary;  // one line for listings
  std::function<Adapter(Backbone&, const nlohmann::json& config, const ModuleEnv&)> build;
  // The folder as load_module read it (config, peft_type, tensors): read once.
  std::function<Adapter(Backbone&, const io::PeftFolder& folder, const ModuleEnv&)> load;
  std::function<void(const Adapter&, const std::string& dir)> save;
};

// Every registered type, in a fixed order.
const std::vector<ModuleType>& module_types();
// The row of `peft_type`; std::invalid_argument listing the known types when absent.
const ModuleType& module_type(const std::string& peft_type);
std::vector<std::string> supported_peft_types();

// Fresh modules from a config ("peft_type" picks the row). Throws std::invalid_argument
// naming the bad key / unknown type.
Adapter build_module(Backbone& model, const nlohmann::json& config, const ModuleEnv& env = {});
// A module folder of any type (adapter_config.json's peft_type picks the row).
Adapter load_module(Backbone& model, const std::string& dir, const ModuleEnv& env = {});
// Writes a folder `load_module` reads back (and PEFT, for PEFT types).
void save_module(const Adapter& adapter, const std::string& dir);

// The names earlier code used; same as build_module / load_module / save_module.
Adapter add_adapter(Backbone& model, const nlohmann::json& config, const std::string& name = "default");
Adapter load_adapter(Backbone& model, const std::string& dir, const std::string& name = "default");
void save_adapter(const Adapter& adapter, const std::string& dir);

// Specs "dir" or "dir:0.5" (scale after the last ':'), loaded in order as a0, a1, ...;
// `task` for hypernetwork folders.
std::vector<Adapter> load_module_folders(Backbone& model, const std::vector<std::string>& specs, int64_t task = 0,
                                         std::shared_ptr<RoutingContext> context = nullptr);

}  // namespace modula
