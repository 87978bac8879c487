// Several LoRA adapters served in one batch, each row routed to its own adapter by name
// (fixed routing by metadata; PEFT's `adapter_names` at inference, here also in training).
//
//   auto mixed = modula::load_mixed_lora(*model, {{"en", "adapters/en"}, {"de", "adapters/de"}});
//   mixed.set_adapter_names({"de", "__base__", "en"});   // row i uses adapter i's name
//   auto out = model->forward({.input_ids = ids});        // rows [3, T]
//
// Every site that any adapter targets gets one ModularLinear over a LoRA bank: ranks are
// zero-padded to the largest, alphas become per-module scalings, an adapter that does not
// target a site contributes nothing there. "__base__" rows run the backbone alone.
#pragma once

#include "modula/backbone/backbone.h"
#include "modula/composition/modular_linear.h"
#include "modula/modules/adapter.h"

namespace modula {

inline const std::string kBaseAdapter = "__base__";

struct MixedLora {
  std::string name;                         // the name the modular layers are attached under
  std::string key = "adapter";              // RoutingContext entry with the per-row ids
  std::vector<std::string> adapter_names;   // module index -> adapter name
  std::shared_ptr<RoutingContext> context;
  std::vector<AttachedModule> sites;        // one ModularLinear per targeted site

  // Row ids for adapter names ("__base__" -> -1); throws std::invalid_argument naming an
  // unknown name and the known ones.
  torch::Tensor row_ids(const std::vector<std::string>& adapter_per_row) const;
  // context->set(key, row_ids(names)): the next forward routes row i to names[i].
  void set_adapter_names(const std::vector<std::string>& adapter_per_row);
  std::vector<torch::Tensor> parameters() const;
  void remove();  // detaches every modular layer
};

// Stacks attached LoRA adapters (routing name = Adapter::name) into a mixed-batch layer;
// consumes them: the originals are removed, on error too.
// Throws std::invalid_argument naming the adapter that is not LORA / is DoRA.
MixedLora mix_lora_adapters(std::vector<Adapter> adapters, const std::string& name = "mixed",
                            std::shared_ptr<RoutingContext> context = nullptr);
// Loads PEFT LoRA folders (name, dir) and stacks them (mix_lora_adapters).
MixedLora load_mixed_lora(Backbone& model, const std::vector<std::pair<std::string, std::string>>& named_dirs,
                          const std::string& name = "mixed", std::shared_ptr<RoutingContext> context = nullptr);

}  // namespace modula
