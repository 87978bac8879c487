// An adapter: one named set of modules of one type attached to a backbone (PEFT's
// unit of save/load). Module types register by peft_type: LORA (incl. rsLoRA, DoRA,
// rank/alpha patterns), IA3, PROMPT_TUNING, PREFIX_TUNING, and modula's own
// MODULA_BOTTLENECK (bottleneck adapters on block sites, docs/module-formats.md).
//
//   auto a = modula::load_adapter(*model, "adapters/sst2");        // PEFT folder
//   auto out = modula::forward_adapted(*model, a, input);
//   modula::save_adapter(a, "out/sst2");                            // PEFT loads it
#pragma once

#include "modula/backbone/backbone.h"
#include "modula/backbone/layers.h"
#include "modula/modules/prompt.h"

#include <nlohmann/json.hpp>

namespace modula {

struct AttachedModule {
  std::string site;                       // HF path of the site
  std::shared_ptr<LinearImpl> layer;      // the Linear site; null for block sites
  std::shared_ptr<SiteModule> module;
  std::map<std::string, std::string> peft_keys;  // module parameter (recursive name) -> PEFT key suffix
  std::shared_ptr<SiteHost> host = nullptr;  // where the module attaches; add_adapter fills it from `layer` if unset
};

struct Adapter {
  std::string name = "default";
  std::string peft_type;
  nlohmann::json config;               // adapter_config.json
  std::vector<AttachedModule> modules;  // parameter/function composition
  std::shared_ptr<InputModule> input;   // input composition (prompt/prefix), or null

  std::vector<torch::Tensor> parameters() const;
  int64_t num_trainable() const;
  void merge();    // fold every site module into the base weights
  void unmerge();  // and back
  void set_enabled(bool on);
  void set_scale(double scale);  // per-adapter strength (site modules); 1 = as trained
};

// Attaches freshly initialised modules described by a PEFT-style config.
// Throws std::invalid_argument naming the bad field / unknown peft_type.
Adapter add_adapter(Backbone& model, const nlohmann::json& config, const std::string& name = "default");
// Loads a PEFT folder; every tensor in the file must find its module and shape.
Adapter load_adapter(Backbone& model, const std::string& dir, const std::string& name = "default");
// Writes a folder that PEFT's from_pretrained loads unchanged.
void save_adapter(const Adapter& adapter, const std::string& dir);
void remove_adapter(Adapter& adapter);
// requires_grad = false for every backbone weight (module parameters untouched).
void freeze_backbone(Backbone& model);
std::vector<std::string> supported_peft_types();

// forward() with the adapter's input module (if any) applied.
BackboneOutput forward_adapted(Backbone& model, const Adapter& adapter, BackboneInput in);

}  // namespace modula
