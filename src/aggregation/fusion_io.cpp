// MODULA_FUSION folders: save / read / load AdapterFusion weights (docs/module-formats.md).
#include <set>

#include "modula/aggregation/fusion.h"
#include "modula/io/peft.h"
#include "modula/util/error.h"

namespace modula {
namespace {

using json = nlohmann::json;

constexpr std::string_view kFusionIoTag = "fusion";

const char* kFusionType = "MODULA_FUSION";

std::string tensor_key(const std::string& site, const std::string& param) {
  return io::kPeftPrefix + site + ".fusion." + param;
}

}  // namespace

void save_fusion(const AdapterFusion& fusion, const std::string& dir) {
  if (fusion.sites.empty()) throw_error(kFusionIoTag, "'" + fusion.name + "' has no sites to save");
  io::NamedTensors tensors;
  json sites = json::array();
  for (const auto& [path, f] : fusion.sites) {
    sites.push_back(path);
    for (const auto& [param, t] : f->fusion_parameters())
      tensors.emplace_back(tensor_key(path, param), t.detach().cpu().contiguous());
  }
  json config = fusion.config;
  config["peft_type"] = kFusionType;
  config["adapters"] = fusion.adapters;
  config["sites"] = sites;
  io::write_peft_folder(dir, config, tensors);
}

FusionFolder read_fusion_folder(const std::string& dir) {
  auto folder = io::read_peft_folder(dir);
  if (folder.peft_type != kFusionType)
    throw_error(kFusionIoTag, dir + ": peft_type is '" + folder.peft_type + "', expected " + kFusionType);
  FusionFolder out;
  out.dir = dir;
  out.config = folder.config;
  const auto& a = folder.config.value("adapters", json());
  if (!a.is_array() || a.empty())
    throw_error(kFusionIoTag, dir + ": adapter_config.json key 'adapters' must be a non-empty list of names");
  for (const auto& n : a) {
    if (!n.is_string())
      throw_error(kFusionIoTag, dir + ": adapter_config.json 'adapters' holds a non-string " + n.dump());
    out.adapters.push_back(n.get<std::string>());
  }
  out.tensors = std::move(folder.tensors);
  return out;
}

void load_fusion_weights(AdapterFusion& fusion, const FusionFolder& folder) {
  std::set<std::string> used;
  torch::NoGradGuard no_grad;
  for (auto& [path, f] : fusion.sites)
    for (auto& [param, dst] : f->fusion_parameters()) {
      const auto key = tensor_key(path, param);
      auto it = folder.tensors.find(key);
      if (it == folder.tensors.end())
        throw_error(kFusionIoTag, folder.dir + ": adapter_model.safetensors has no tensor '" + key + "'");
      if (it->second.sizes() != dst.sizes())
        throw_error(kFusionIoTag, folder.dir + ": tensor '" + key + "' has shape " + c10::str(it->second.sizes()) +
                                      ", expected " + c10::str(dst.sizes()));
      dst.copy_(it->second);
      used.insert(key);
    }
  for (const auto& [key, t] : folder.tensors)
    if (!used.count(key))
      throw_error(kFusionIoTag,
                  folder.dir + ": tensor '" + key + "' matches no fusion site of this model and these adapters");
}

AdapterFusion load_fusion(Backbone& model, const std::string& dir, const std::vector<const Adapter*>& adapters,
                          const std::string& name) {
  auto folder = read_fusion_folder(dir);
  std::vector<const Adapter*> ordered;
  for (const auto& member : folder.adapters) {
    const Adapter* found = nullptr;
    for (const auto* a : adapters)
      if (a && a->name == member) found = a;
    if (!found) {
      std::string given;
      for (const auto* a : adapters) given += (given.empty() ? "" : ", ") + (a ? a->name : std::string("null"));
      throw_error(kFusionIoTag,
                  dir + ": member adapter '" + member + "' is not among the adapters given (" + given + ")");
    }
    ordered.push_back(found);
  }
  if (ordered.size() != adapters.size())
    throw_error(kFusionIoTag, dir + ": fuses " + std::to_string(ordered.size()) + " adapters, given " +
                                  std::to_string(adapters.size()));
  json config = folder.config;
  for (const char* k : {"peft_type", "adapters", "sites", "inference_mode"}) config.erase(k);
  auto fusion = add_fusion(model, ordered, config, name);
  try {
    load_fusion_weights(fusion, folder);
  } catch (...) {
    remove_fusion(fusion);
    throw;
  }
  return fusion;
}

}  // namespace modula
