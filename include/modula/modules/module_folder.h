// Module folders of any type on one model (what `modula generate/export --adapter` take). PEFT types (LORA, IA3, PROMPT_TUNING, PREFIX_TUNING) and
// MODULA_BOTTLENECK attach as adapters; MODULA_SPARSE_FT adds scale·φ to the weights;
// MODULA_BITFIT copies its biases in; MODULA_HYPER_LORA attaches the hypernetwork with the
// modules of one task (--task).
#pragma once

#include "modula/modules/adapter.h"
#include "modula/modules/bitfit.h"
#include "modula/modules/hypernetwork.h"
#include "modula/modules/sparse_ft.h"

#include <string>
#include <vector>

namespace modula {

struct LoadedModules {
  std::vector<Adapter> adapters;  // named a0, a1, ... by position
  std::vector<SparseDiff> diffs;  // already applied to the weights
  std::vector<BitFit> bitfits;    // already copied into the weights
  std::vector<std::pair<HyperLora, double>> hypers;  // attached, with their scale

  size_t size() const { return adapters.size() + diffs.size() + bitfits.size() + hypers.size(); }
  // Folds every module into the base weights (export): throws for modules that cannot be
  // merged (bottleneck adapters, prompts).
  void merge(Backbone& model);
};

// Loads one folder by its peft_type with strength `scale`; `task` picks the task row of
// hypernetwork folders. Modules are named a0, a1, ... by their position in `into`.
void load_module_folder(Backbone& model, const std::string& dir, double scale, int64_t task, LoadedModules& into);

// Specs "dir" or "dir:0.5" (scale after the last ':').
LoadedModules load_module_folders(Backbone& model, const std::vector<std::string>& specs, int64_t task = 0);

}  // namespace modula
