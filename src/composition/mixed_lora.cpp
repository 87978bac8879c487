#include "modula/composition/mixed_lora.h"
#include "modula/routing/fixed.h"

#include <algorithm>
#include <map>
#include <set>
#include <stdexcept>

namespace modula {
namespace {
[[noreturn]] void bad(const std::string& m) { throw std::invalid_argument("[mixed lora] " + m); }
}  // namespace

torch::Tensor MixedLora::row_ids(const std::vector<std::string>& adapter_per_row) const {
  std::vector<int64_t> ids;
  ids.reserve(adapter_per_row.size());
  for (const auto& n : adapter_per_row) {
    if (n == kBaseAdapter) {
      ids.push_back(-1);
      continue;
    }
    auto it = std::find(adapter_names.begin(), adapter_names.end(), n);
    if (it == adapter_names.end()) {
      std::string known = kBaseAdapter;
      for (const auto& a : adapter_names) known += ", " + a;
      bad("unknown adapter name '" + n + "' (known: " + known + ")");
    }
    ids.push_back(it - adapter_names.begin());
  }
  return torch::tensor(ids, torch::kLong);
}

void MixedLora::set_adapter_names(const std::vector<std::string>& adapter_per_row) {
  context->set(key, row_ids(adapter_per_row));
}

std::vector<torch::Tensor> MixedLora::parameters() const {
  std::vector<torch::Tensor> out;
  for (const auto& s : sites)
    for (const auto& p : s.module->parameters()) out.push_back(p);
  return out;
}

void MixedLora::remove() {
  for (auto& s : sites) s.host->detach(name);
  sites.clear();
}

MixedLora mix_lora_adapters(std::vector<Adapter> adapters, const std::string& name, std::shared_ptr<RoutingContext> context) {
  if (adapters.empty()) bad("no adapters to mix");
  MixedLora mixed;
  mixed.name = name;
  mixed.context = context ? std::move(context) : std::make_shared<RoutingContext>();
  // site path -> (layer, one LoRA per adapter, null where the adapter does not target it)
  std::map<std::string, std::pair<std::shared_ptr<LinearImpl>, std::vector<std::shared_ptr<LoraImpl>>>> by_site;
  std::vector<std::string> order;  // site paths in module order
  const auto M = adapters.size();
  auto reject = [&](const std::string& m) {  // the adapters are consumed on error too
    for (auto& a : adapters) remove_adapter(a);
    bad(m);
  };
  for (size_t m = 0; m < M; ++m) {
    auto& a = adapters[m];
    if (a.peft_type != "LORA") reject("adapter '" + a.name + "' is " + a.peft_type + ", only LORA adapters can be mixed");
    if (std::count(mixed.adapter_names.begin(), mixed.adapter_names.end(), a.name) || a.name == kBaseAdapter)
      reject("adapter name '" + a.name + "' is used twice or reserved");
    mixed.adapter_names.push_back(a.name);
    for (auto& mod : a.modules) {
      auto lora = std::dynamic_pointer_cast<LoraImpl>(mod.module);
      if (!lora || !mod.layer) reject("adapter '" + a.name + "' has a non-LoRA module at " + mod.site);
      if (lora->options.use_dora()) reject("adapter '" + a.name + "' uses DoRA (not linear in x); it cannot be mixed");
      if (lora->merged) reject("adapter '" + a.name + "' is merged into the weights; unmerge it first");
      auto& entry = by_site[mod.site];
      if (!entry.first) {
        entry = {mod.layer, std::vector<std::shared_ptr<LoraImpl>>(M)};
        order.push_back(mod.site);
      }
      entry.second[m] = lora;
    }
  }
  for (auto& a : adapters) remove_adapter(a);
  for (const auto& site : order) {
    auto& [layer, loras] = by_site[site];
    auto bank = LoraBank(LoraBankImpl::stack(loras));
    auto router = std::make_shared<FixedRouterImpl>(FixedRouterOptions(static_cast<int64_t>(M)).key(mixed.key), mixed.context);
    auto module = std::make_shared<ModularLinearImpl>(bank, router);
    module->to(layer->weight.device(), layer->weight.scalar_type());
    layer->attach(name, module);
    mixed.sites.push_back({site, layer, module, {}, layer});
  }
  return mixed;
}

MixedLora load_mixed_lora(Backbone& model, const std::vector<std::pair<std::string, std::string>>& named_dirs,
                          const std::string& name, std::shared_ptr<RoutingContext> context) {
  std::vector<Adapter> adapters;  // attached under their routing names until mixed
  try {
    for (const auto& [adapter_name, dir] : named_dirs) {
      if (adapter_name == kBaseAdapter) bad("adapter name '" + adapter_name + "' is reserved for rows without adapter");
      adapters.push_back(load_adapter(model, dir, adapter_name));
    }
  } catch (...) {
    for (auto& a : adapters) remove_adapter(a);
    throw;
  }
  return mix_lora_adapters(std::move(adapters), name, std::move(context));
}

}  // namespace modula
