// MODULA_COMPOSITION: a composition spec over member modules as one module (build / load /
// save), its trained tensors under stable names (composition_module.h).
#include "modula/composition/composition_module.h"

#include <algorithm>
#include <set>

#include "modula/io/config_field.h"
#include "modula/io/peft.h"
#include "modula/util/error.h"

namespace modula {
namespace {

using json = nlohmann::json;

constexpr std::string_view kCompositionModuleTag = "compose";

// The spec's input modules (prompts, concat) applied in order; it holds no parameters of
// its own (they belong to the member adapters).
class InputSequence : public InputModule {
 public:
  explicit InputSequence(std::vector<std::shared_ptr<InputModule>> parts) : parts_(std::move(parts)) {}
  void prepare(Backbone& model, BackboneInput& in, KVCache& scratch) override {
    for (const auto& p : parts_) p->prepare(model, in, scratch);
  }
  int64_t num_virtual_tokens() const override {
    int64_t n = 0;
    for (const auto& p : parts_) n += p->num_virtual_tokens();
    return n;
  }
  torch::Tensor prompt_embeddings() const override { return {}; }

 private:
  std::vector<std::shared_ptr<InputModule>> parts_;
};

struct CompositionState : AdapterState {
  Composition comp;
  std::vector<torch::Tensor> parameters() const override {
    auto out = comp.parameters();
    for (size_t i = 0; i < comp.routers.size(); ++i)
      if (!comp.router_keys[i].empty())
        for (const auto& p : comp.routers[i]->parameters()) out.push_back(p);
    return out;
  }
  void set_enabled(bool on) override {
    for (auto& [path, site] : comp.sites)
      if (auto m = site->module(comp.name)) m->enabled = on;
    for (auto& [path, layer] : comp.linear_sites)
      if (auto m = layer->module(comp.name)) m->enabled = on;
  }
  void set_scale(double s) override {
    if (s != 1.0)
      throw_error(kCompositionModuleTag, "a composition (MODULA_COMPOSITION) has no scale; scale its members instead");
  }
  bool mergeable() const override { return false; }
  void remove() override { remove_composition(comp); }
};

// The spec of a config: a string in any spec form, or the JSON form.
SpecNode config_spec(const json& c, const std::string& where) {
  if (!c.contains("spec"))
    throw_error<ConfigError>(kCompositionModuleTag, where + ": MODULA_COMPOSITION needs \"spec\"");
  const auto& v = c["spec"];
  try {
    if (v.is_string()) return parse_spec(v.get<std::string>());
    if (v.is_object()) return parse_spec_json(v);
  } catch (const SpecError& e) {
    throw_error<ConfigError>(kCompositionModuleTag, where + ": 'spec': " + e.what());
  }
  throw_error<ConfigError>(kCompositionModuleTag,
                           where + ": 'spec' must be a spec string or its JSON form, got " + v.dump());
}

// Applies the config's spec over env.members.
Composition build(Backbone& model, const json& c, const ModuleEnv& env, const std::string& where) {
  const auto spec = config_spec(c, where);
  const auto field_tag = "[" + std::string(kCompositionModuleTag) + "] " + where + ":";
  const auto names = module_names(spec);
  const auto listed = io::config_field<std::vector<std::string>>(c, "adapters", names, field_tag);
  std::map<std::string, const Adapter*> members;
  for (const auto& n : names) {
    if (std::find(listed.begin(), listed.end(), n) == listed.end())
      throw_error<ConfigError>(kCompositionModuleTag,
                               where + ": the spec names '" + n + "', which 'adapters' does not list");
    auto it = env.members.find(n);
    if (it == env.members.end())
      throw_error<ConfigError>(kCompositionModuleTag,
                               where + ": member module '" + n +
                                   "' is not loaded (load the composed modules first and pass them as members)");
    members[n] = it->second;
  }
  ComposeOptions o;
  o.name(io::config_field<std::string>(c, "name", env.name, field_tag));
  o.fusion(c.contains("fusion") && !c["fusion"].is_null() ? c["fusion"] : json::object());
  o.context(env.context);
  auto untagged = [](std::string msg) {  // apply_spec's messages carry "[compose] " already
    return msg.rfind("[compose] ", 0) == 0 ? msg.substr(10) : msg;
  };
  try {
    return apply_spec(model, spec, members, o);
  } catch (const SpecError& e) {
    throw_error<ConfigError>(kCompositionModuleTag, where + ": " + untagged(e.what()));
  } catch (const std::invalid_argument& e) {
    throw_error(kCompositionModuleTag, where + ": " + untagged(e.what()));
  }
}

// Copies a folder's tensors in; every key must name a tensor of the same shape and every
// tensor must be there.
void load_tensors(const Composition& comp, const io::PeftFolder& folder) {
  std::map<std::string, torch::Tensor> want;
  for (auto& [key, t] : composition_tensors(comp)) want.emplace(key, t);
  torch::NoGradGuard no_grad;
  for (const auto& [key, t] : folder.tensors) {
    auto it = want.find(key);
    if (it == want.end())
      throw_error(kCompositionModuleTag, folder.dir + ": tensor '" + key + "' is not a parameter of the composition " +
                                             to_string(comp.spec) + " (saved from another spec or model?)");
    if (it->second.sizes() != t.sizes())
      throw_error(kCompositionModuleTag, folder.dir + ": tensor '" + key + "' has shape " + c10::str(t.sizes()) +
                                             ", expected " + c10::str(it->second.sizes()));
    it->second.copy_(t.to(it->second.device(), it->second.scalar_type()));
    want.erase(it);
  }
  if (!want.empty())
    throw_error(kCompositionModuleTag, folder.dir + ": tensor '" + want.begin()->first + "' is missing (" +
                                           std::to_string(want.size()) + " of the composition's tensors are)");
}

}  // namespace

std::vector<std::pair<std::string, torch::Tensor>> composition_tensors(const Composition& comp) {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (size_t i = 0; i < comp.fusions.size(); ++i)
    for (const auto& [site, f] : comp.fusions[i].sites)
      for (const auto& [key, p] : f->fusion_parameters())
        out.emplace_back("fuse" + std::to_string(i) + "." + site + "." + key, p);
  for (size_t i = 0; i < comp.routers.size(); ++i) {
    if (comp.router_keys[i].empty()) continue;  // fixed routing: nothing trained
    for (const auto& p : comp.routers[i]->named_parameters())
      out.emplace_back(comp.router_keys[i] + "." + p.key(), p.value());
  }
  return out;
}

void save_composition(const Composition& comp, const std::string& dir) {
  json config = {{"peft_type", kCompositionType},
                 {"spec", to_string(comp.spec)},
                 {"adapters", module_names(comp.spec)},
                 {"fusion", comp.options.fusion()}};
  io::NamedTensors tensors;
  for (const auto& [key, t] : composition_tensors(comp)) tensors.emplace_back(key, t.detach().cpu().contiguous());
  io::write_peft_folder(dir, config, tensors);
}

Adapter composition_adapter(Composition comp, const std::string& name) {
  auto s = std::make_shared<CompositionState>();
  s->comp = std::move(comp);
  Adapter a;
  a.name = name;
  a.peft_type = kCompositionType;
  a.config = {{"peft_type", kCompositionType},
              {"spec", to_string(s->comp.spec)},
              {"adapters", module_names(s->comp.spec)},
              {"fusion", s->comp.options.fusion()}};
  if (!s->comp.inputs.empty()) a.input = std::make_shared<InputSequence>(s->comp.inputs);
  a.context = s->comp.context;
  a.state = std::move(s);
  return a;
}

const Composition* composition_of(const Adapter& a) {
  auto s = std::dynamic_pointer_cast<CompositionState>(a.state);
  return s ? &s->comp : nullptr;
}

std::set<std::string> fused_module_names(const SpecNode& spec) {
  std::set<std::string> out;
  if (spec.kind == SpecNode::Kind::Fuse)
    for (const auto& name : module_names(spec)) out.insert(name);
  for (const auto& c : spec.children)
    for (const auto& name : fused_module_names(c)) out.insert(name);
  return out;
}

ModuleType composition_row() {
  ModuleType t;
  t.peft_type = kCompositionType;
  t.summary = "a composition spec over member modules, with its trained fusions and routers";
  t.build = [](Backbone& m, const json& c, const ModuleEnv& env) {
    return composition_adapter(build(m, c, env, "MODULA_COMPOSITION config"), env.name);
  };
  t.load = [](Backbone& m, const io::PeftFolder& folder, const ModuleEnv& env) {
    auto comp = build(m, folder.config, env, folder.dir);
    try {
      load_tensors(comp, folder);
      comp.untrained.clear();  // every fusion and router weight came from the folder
    } catch (...) {
      remove_composition(comp);
      throw;
    }
    return composition_adapter(std::move(comp), env.name);
  };
  t.save = [](const Adapter& a, const std::string& dir) {
    const auto* comp = composition_of(a);
    if (!comp)
      throw_error(kCompositionModuleTag, "adapter '" + a.name + "' (" + a.peft_type + ") holds no composition to save");
    save_composition(*comp, dir);
  };
  return t;
}

}  // namespace modula
