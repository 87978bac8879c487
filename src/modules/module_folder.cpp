#include "modula/modules/module_folder.h"

#include "modula/io/peft.h"
#include "modula/modules/targets.h"

namespace modula {
namespace {

std::pair<std::string, double> parse_spec(const std::string& spec) {
  auto colon = spec.rfind(':');
  if (colon == std::string::npos) return {spec, 1.0};
  try {
    return {spec.substr(0, colon), std::stod(spec.substr(colon + 1))};
  } catch (const std::exception&) {
    throw std::invalid_argument("[modules] adapter spec " + spec + ": scale after ':' must be a number");
  }
}

// W ← W + scale · alpha/r · B A for one task's generated modules.
void merge_hyper(Backbone& model, HyperLoraImpl& hyper, double scale) {
  torch::NoGradGuard no_grad;
  auto sites = linear_sites(model);
  auto weights = hyper.modules_for_embedding(hyper.task_embedding()[0]);
  for (const auto& w : weights)
    for (auto& [path, layer] : sites)
      if (path == w.site)
        layer->add_to_weight((scale * hyper.options.scaling()) * torch::matmul(w.lora_B, w.lora_A).to(layer->weight.dtype()));
  hyper.detach();
}

}  // namespace

void LoadedModules::merge(Backbone& model) {
  for (auto& a : adapters) a.merge();
  for (auto& [hyper, scale] : hypers) merge_hyper(model, *hyper, scale);
  hypers.clear();
}

void load_module_folder(Backbone& model, const std::string& dir, double scale, int64_t task, LoadedModules& out) {
  const auto type = io::read_peft_folder(dir).peft_type;
  const auto name = "a" + std::to_string(out.size());
  if (type == "MODULA_SPARSE_FT") {
    out.diffs.push_back(load_sparse_diff(model, dir));
    out.diffs.back()->apply(model, scale);
  } else if (type == "MODULA_BITFIT") {
    if (scale != 1.0) throw std::invalid_argument("[modules] " + dir + ": BitFit biases take no scale");
    out.bitfits.push_back(load_bitfit(model, dir));
  } else if (type == kHyperLoraType) {
    auto hyper = load_hyper_lora(model, dir, name);
    hyper->set_task_ids(torch::tensor({task}, torch::kLong));
    out.hypers.emplace_back(hyper, scale);
    for (const auto& site : linear_sites(model))
      if (auto m = site.second->module(name)) m->scale = scale;
  } else {
    out.adapters.push_back(load_adapter(model, dir, name));
    if (scale != 1.0) out.adapters.back().set_scale(scale);
  }
}

LoadedModules load_module_folders(Backbone& model, const std::vector<std::string>& specs, int64_t task) {
  LoadedModules out;
  for (const auto& spec : specs) {
    auto [dir, scale] = parse_spec(spec);
    load_module_folder(model, dir, scale, task, out);
  }
  return out;
}

}  // namespace modula
