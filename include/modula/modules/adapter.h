// The one handle for a set of modules attached to a backbone: what the module registry
// (composition/registry.h) builds, loads and saves for every module type, and what a
// mixed batch, a fusion or a composition returns. Site modules (LoRA, (IA)³, bottleneck,
// Poly, MoE, routed banks) sit in `modules`; input modules (prompt, prefix, input banks)
// in `input`; anything else (a hypernetwork, a sparse difference or biases written into
// the weights, a fusion's members) in `state`.
//
//   auto a = modula::load_module(*model, "adapters/sst2");     // any module folder
//   auto out = modula::forward_adapted(*model, a, input);
//   modula::save_module(a, "out/sst2");                        // PEFT loads PEFT types
#pragma once

#include <nlohmann/json.hpp>

#include "modula/backbone/backbone.h"
#include "modula/backbone/layers.h"
#include "modula/modules/prompt.h"

namespace modula {

class RoutingContext;  // routing/router.h

struct AttachedModule {
  std::string site;                   // HF path of the site
  std::shared_ptr<LinearImpl> layer;  // the Linear site; null for block sites
  std::shared_ptr<SiteModule> module;
  std::map<std::string, std::string> peft_keys;  // module parameter (recursive name) -> PEFT key suffix
  std::shared_ptr<SiteHost> host = nullptr;  // where the module attaches; add_adapter fills it from `layer` if unset
  std::string attached_as = {};              // its name at the host; empty = the adapter's name
};

// The parts of a module set that are not site or input modules (a hypernetwork, weights
// changed in place). Each hook defaults to "nothing to do".
class AdapterState {
 public:
  virtual ~AdapterState() = default;
  virtual std::vector<torch::Tensor> parameters() const { return {}; }
  virtual void set_enabled(bool on) {}
  virtual void set_scale(double scale) {}
  virtual bool mergeable() const { return true; }
  virtual void merge() {}
  virtual void unmerge() {}
  virtual void remove() {}
  // Before each forward in training: re-derive what the parameters feed (a sparse diff's
  // θ₀ + φ after an optimizer step).
  virtual void refresh() {}
  // Modules trained in two phases (LT-SFT's lottery ticket): the steps of the dense phase a
  // trainer runs first over parameters() (0 = none), and the call that ends it (after
  // which parameters() are the module's own).
  virtual int64_t dense_phase_steps() const { return 0; }
  virtual void end_dense_phase() {}
};

struct Adapter {
  std::string name = "default";
  std::string peft_type;
  nlohmann::json config;                // adapter_config.json
  std::vector<AttachedModule> modules;  // parameter/function composition
  std::shared_ptr<InputModule> input;   // input composition (prompt/prefix), or null
  std::shared_ptr<AdapterState> state;  // everything else, or null
  // Per-row routing metadata the modules read (task ids, module per row, padding mask);
  // null when nothing routes by metadata.
  std::shared_ptr<RoutingContext> context;

  std::vector<torch::Tensor> parameters() const;
  int64_t num_trainable() const;
  bool mergeable() const;
  void merge();    // fold every module into the base weights (std::invalid_argument when one cannot be)
  void unmerge();  // and back
  void set_enabled(bool on);
  void set_scale(double scale);  // per-adapter strength; 1 = as trained
  void remove();                 // detach everything (the handle is empty afterwards)
};

// PEFT-layout module sets of the modules library (build + attach), one per type; the
// registry (composition/registry.h) has one row per type and calls these.
Adapter lora_adapter(Backbone& model, const nlohmann::json& config, const std::string& name);
Adapter ia3_adapter(Backbone& model, const nlohmann::json& config, const std::string& name);
Adapter prompt_adapter(Backbone& model, const nlohmann::json& config, const std::string& name);
Adapter prefix_adapter(Backbone& model, const nlohmann::json& config, const std::string& name);
Adapter bottleneck_adapter(Backbone& model, const nlohmann::json& config, const std::string& name);
// Attaches a.modules at their hosts (AttachedModule::host, else the layer).
void attach_modules(Adapter& a);
// Copies a PEFT folder's tensors into the adapter's parameters (keys "base_model.model.<site>.<peft key>",
// "prompt_embeddings"); every tensor must find its parameter and shape. Removes the adapter
// and throws std::invalid_argument naming `dir` and the key otherwise.
void load_peft_tensors(Adapter& a, const std::string& dir, const std::map<std::string, torch::Tensor>& tensors);
// Writes adapter_config.json (+ inference_mode) and adapter_model.safetensors in PEFT's layout.
void save_peft_folder(const Adapter& a, const std::string& dir);

void remove_adapter(Adapter& adapter);  // adapter.remove()
// requires_grad = false for every backbone weight (module parameters untouched).
void freeze_backbone(Backbone& model);

// forward() with the adapter's input module (if any) applied.
BackboneOutput forward_adapted(Backbone& model, const Adapter& adapter, BackboneInput in);

}  // namespace modula
