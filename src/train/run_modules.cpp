// The modules of a run around one backbone: members, per-task activation, routing ids.
#include "run_modules.h"

#include <algorithm>

#include "modula/composition/composition_module.h"

namespace modula::train::detail {

void note_members(const Adapter& a, std::set<std::string>& composed, std::set<std::string>& fused) {
  if (a.peft_type == "MODULA_FUSION")  // members run inside the fusion, frozen
    for (const auto& member : a.config.value("adapters", std::vector<std::string>{}))
      composed.insert(member), fused.insert(member);
  if (const auto* c = composition_of(a)) {  // MODULA_COMPOSITION: members run inside it
    for (const auto& member : module_names(c->spec)) composed.insert(member);
    for (const auto& member : fused_module_names(c->spec)) fused.insert(member);
  }
}

InputModules activate_modules(std::vector<Adapter>& adapters, const std::set<std::string>& composed,
                              const std::vector<std::string>* enabled, const Composition* composition) {
  InputModules on;
  for (auto& a : adapters) {
    if (composed.count(a.name)) continue;
    bool use = !enabled || enabled->empty() || std::find(enabled->begin(), enabled->end(), a.name) != enabled->end();
    a.set_enabled(use);
    if (a.state) a.state->refresh();
    if (use && a.input) on.push_back(a.input);
  }
  if (composition)
    for (const auto& m : composition->inputs) on.push_back(m);
  return on;
}

void route_batch(RoutingContext& context, RoutingContext* also, const std::vector<MetadataField>& metadata, size_t ti,
                 const Batch& b, const torch::Device& device) {
  auto set = [&](const std::string& key, const torch::Tensor& ids) {
    context.set(key, ids);
    if (also) also->set(key, ids);
  };
  const int64_t rows = b.input_ids.size(0);
  set("task", torch::full({rows}, static_cast<int64_t>(ti), torch::TensorOptions(torch::kInt64).device(device)));
  if (metadata.empty()) return;
  auto meta = b.metadata.to(device);
  for (size_t f = 0; f < metadata.size(); ++f)
    set(metadata[f].name, meta.select(1, static_cast<int64_t>(f)).contiguous());
}

}  // namespace modula::train::detail
