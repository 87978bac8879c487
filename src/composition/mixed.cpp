#include "modula/composition/mixed.h"

#include <algorithm>
#include <map>
#include <stdexcept>

#include "modula/aggregation/routed.h"
#include "modula/composition/apply_spec.h"
#include "modula/composition/ia3_bank.h"
#include "modula/composition/input_bank.h"
#include "modula/composition/modular_linear.h"
#include "modula/composition/registry.h"
#include "modula/modules/ia3.h"
#include "modula/modules/lora.h"
#include "modula/routing/fixed.h"
#include "modula/util/error.h"

namespace modula {
namespace {

using json = nlohmann::json;

constexpr std::string_view kMixedTag = "mixed";

// One site's modules, one slot per module set (null where the set has none there).
struct LinearSlots {
  std::shared_ptr<LinearImpl> layer;
  std::vector<std::shared_ptr<LoraImpl>> lora;
  std::vector<std::shared_ptr<Ia3Impl>> ia3;
};
struct BlockSlots {
  std::shared_ptr<SiteHost> host;
  std::vector<std::shared_ptr<SiteModule>> modules;
  std::vector<std::string> attached_as;  // each module's name at the host
};

// A served composition's block-site members (attached, switched off, run by its composites).
struct ComposedSetState : AdapterState {
  std::vector<std::pair<std::shared_ptr<SiteHost>, std::string>> members;
  void remove() override {
    for (auto& [host, name] : members)
      if (host->module(name)) host->detach(name);
    members.clear();
  }
  bool mergeable() const override { return false; }
};

// The block-site members that run inside the routed composites: detached with the handle.
struct MixState : AdapterState {
  std::vector<std::pair<std::shared_ptr<SiteHost>, std::string>> members;
  std::vector<std::shared_ptr<AdapterState>> sets;  // composition sets' own members
  void remove() override {
    for (auto& [host, name] : members)
      if (host->module(name)) host->detach(name);
    members.clear();
    for (auto& s : sets) s->remove();
    sets.clear();
  }
  bool mergeable() const override { return false; }
};

// Two LoRA modules of one set at one site (a stack or avg of LoRAs): one module of rank
// r_a + r_b with A = [A_a; A_b], B = [s_a B_a, s_b B_b] and s = 1, the same delta.
std::shared_ptr<LoraImpl> concat_lora(const LoraImpl& a, const LoraImpl& b) {
  const int64_t r = a.options.r() + b.options.r();
  auto out = std::make_shared<LoraImpl>(LoraOptions(a.options.in_features(), a.options.out_features()).r(r).alpha(r));
  out->to(a.lora_A.device(), a.lora_A.scalar_type());
  torch::NoGradGuard no_grad;
  out->lora_A.copy_(torch::cat({a.lora_A, b.lora_A}, 0));
  out->lora_B.copy_(
      torch::cat({a.lora_B * (a.scale * a.options.scaling()), b.lora_B * (b.scale * b.options.scaling())}, 1));
  return out;
}

// Two (IA)³ vectors of one set at one site, same side: their product (scales folded in).
std::shared_ptr<Ia3Impl> multiply_ia3(const Ia3Impl& a, const Ia3Impl& b, const std::string& what) {
  if (a.options.feedforward() != b.options.feedforward())
    throw_error(kMixedTag, what + ": (IA)³ vectors on the input and on the output of one site cannot be combined");
  auto out = std::make_shared<Ia3Impl>(a.options);
  out->to(a.ia3_l.device(), a.ia3_l.scalar_type());
  torch::NoGradGuard no_grad;
  auto scaled = [](const Ia3Impl& m) { return 1 + m.scale * (m.ia3_l - 1); };
  out->ia3_l.copy_(scaled(a) * scaled(b));
  return out;
}

// Sorts every module of the sets into per-site slots; throws for modules that cannot be mixed.
void collect(const std::vector<Adapter>& sets, std::map<std::string, LinearSlots>& linear,
             std::map<std::string, BlockSlots>& block, std::vector<std::string>& order) {
  const auto M = sets.size();
  for (size_t m = 0; m < M; ++m) {
    const auto& a = sets[m];
    if (a.state && !std::dynamic_pointer_cast<ComposedSetState>(a.state))
      throw_error(kMixedTag, "'" + a.name + "' (" + a.peft_type +
                                 ") keeps state outside its site modules and cannot be mixed per row");
    for (const auto& mod : a.modules) {
      auto what = "'" + a.name + "' (" + a.peft_type + ") at " + mod.site;
      if (mod.module->merged) throw_error(kMixedTag, what + " is merged into the weights; unmerge it first");
      if (mod.module->site_kind() == SiteKind::Block) {
        auto& slot = block[mod.site];
        if (!slot.host)
          slot = {mod.host, std::vector<std::shared_ptr<SiteModule>>(M), std::vector<std::string>(M)},
          order.push_back(mod.site);
        if (slot.modules[m]) throw_error(kMixedTag, what + ": a second block module of one set at one site");
        slot.modules[m] = mod.module;
        slot.attached_as[m] = mod.attached_as.empty() ? a.name : mod.attached_as;
        continue;
      }
      auto& slot = linear[mod.site];
      if (!slot.layer)
        slot = {mod.layer, std::vector<std::shared_ptr<LoraImpl>>(M), std::vector<std::shared_ptr<Ia3Impl>>(M)},
        order.push_back(mod.site);
      if (auto lora = std::dynamic_pointer_cast<LoraImpl>(mod.module)) {
        if (lora->options.use_dora())
          throw_error(kMixedTag,
                      what +
                          " uses DoRA (it rescales the base layer's output per adapter, not only adds a delta); it "
                          "cannot be mixed per row");
        slot.lora[m] = slot.lora[m] ? concat_lora(*slot.lora[m], *lora) : lora;
      } else if (auto ia3 = std::dynamic_pointer_cast<Ia3Impl>(mod.module)) {
        slot.ia3[m] = slot.ia3[m] ? multiply_ia3(*slot.ia3[m], *ia3, what) : ia3;
      } else {
        throw_error(kMixedTag,
                    what + ": this module routes on its own (Poly, MoE, hypernetwork) and cannot be mixed per row");
      }
    }
  }
}

// A set with LoRA and (IA)³ at one site (a composition): their order matters there, and the
// banks of a mixed site run LoRA first; rejected rather than reordered.
void check_one_kind(const std::map<std::string, LinearSlots>& linear, const std::vector<Adapter>& sets) {
  for (const auto& [site, slot] : linear)
    for (size_t m = 0; m < sets.size(); ++m)
      if (slot.lora[m] && slot.ia3[m])
        throw_error(kMixedTag, "'" + sets[m].name + "' has LoRA and (IA)³ at " + site +
                                   ": their order there matters and cannot be kept per row; serve them separately");
}

template <class Module>
bool any(const std::vector<std::shared_ptr<Module>>& v) {
  return std::any_of(v.begin(), v.end(), [](const auto& p) { return p != nullptr; });
}

std::shared_ptr<RouterImpl> fixed(size_t M, const std::string& key, const std::shared_ptr<RoutingContext>& ctx) {
  return FixedRouter(FixedRouterOptions(static_cast<int64_t>(M)).key(key), ctx).ptr();
}

// Linear sites: a ModularLinear over a LoRA bank and/or an (IA)³ bank.
void mix_linear(Adapter& mixed, const std::string& site, LinearSlots& s, size_t M, const std::string& key) {
  auto add = [&](std::shared_ptr<ModularLinearImpl> layer, const std::string& as) {
    layer->to(s.layer->weight.device(), s.layer->weight.scalar_type());
    AttachedModule am{site, s.layer, layer, {}, s.layer, as};
    s.layer->attach(as, layer);
    mixed.modules.push_back(am);
  };
  if (any(s.lora))
    add(std::make_shared<ModularLinearImpl>(LoraBankImpl::stack(s.lora), fixed(M, key, mixed.context)), mixed.name);
  if (any(s.ia3))
    add(std::make_shared<ModularLinearImpl>(Ia3BankImpl::stack(s.ia3), fixed(M, key, mixed.context)),
        mixed.name + "_ia3");
}

// Block sites: the members stay attached (switched off) and run inside a Routed composite.
void mix_block(Adapter& mixed, MixState& state, const std::string& site, BlockSlots& s,
               const std::vector<Adapter>& sets, const std::string& key) {
  std::vector<std::shared_ptr<SiteModule>> children;
  for (size_t m = 0; m < sets.size(); ++m) {
    if (s.modules[m]) state.members.emplace_back(s.host, s.attached_as[m]);
    children.push_back(s.modules[m] ? s.modules[m] : IdentityBlock().ptr());
  }
  for (auto& c : children) c->enabled = false;  // the routed composite runs them (a composition set's too)
  auto routed = std::make_shared<RoutedImpl>(fixed(sets.size(), key, mixed.context), children);
  attach_composition(*s.host, mixed.name, routed);
  mixed.modules.push_back({site, nullptr, routed, {}, s.host, mixed.name});
}

// Input modules: one InputBank over the sets that have one (its own ids, "<key>.input").
void mix_inputs(Adapter& mixed, const std::vector<Adapter>& sets, const std::string& key) {
  std::vector<std::shared_ptr<InputModule>> inputs;
  json index = json::array();
  for (const auto& a : sets) {
    index.push_back(a.input ? static_cast<int64_t>(inputs.size()) : -1);
    if (a.input) inputs.push_back(a.input);
  }
  if (inputs.empty()) return;
  mixed.input = InputBank(inputs, mixed.context, InputBankOptions().key(key + ".input")).ptr();
  mixed.config["input_index"] = index;
}

}  // namespace

Adapter mix_adapters(std::vector<Adapter> sets, const std::string& name, std::shared_ptr<RoutingContext> context,
                     const std::string& key) {
  auto reject = [&](const std::string& m) {  // the sets are consumed on error too
    for (auto& a : sets) a.remove();         // (a composition set's state detaches its members)
    throw_error(kMixedTag, m);
  };
  if (sets.empty()) throw_error(kMixedTag, "no module sets to mix");
  Adapter mixed;
  mixed.name = name;
  mixed.peft_type = kMixedType;
  mixed.context = context ? std::move(context) : std::make_shared<RoutingContext>();
  json names = json::array();
  for (const auto& a : sets) {
    if (a.name == kBaseAdapter || std::find(names.begin(), names.end(), a.name) != names.end())
      reject("module set name '" + a.name + "' is used twice or reserved");
    names.push_back(a.name);
  }
  mixed.config = {{"peft_type", kMixedType}, {"modules", names}, {"key", key}};
  std::map<std::string, LinearSlots> linear;
  std::map<std::string, BlockSlots> block;
  std::vector<std::string> order;
  auto state = std::make_shared<MixState>();
  try {
    collect(sets, linear, block, order);
    check_one_kind(linear, sets);
    for (auto& a : sets)  // linear-site modules are copied into banks: detach the originals
      for (auto& mod : a.modules)
        if (mod.module->site_kind() == SiteKind::Linear)
          mod.host->detach(mod.attached_as.empty() ? a.name : mod.attached_as);
    for (const auto& site : order) {
      if (linear.count(site)) mix_linear(mixed, site, linear[site], sets.size(), key);
      if (block.count(site)) mix_block(mixed, *state, site, block[site], sets, key);
    }
    mix_inputs(mixed, sets, key);
    for (auto& a : sets)
      if (a.state) state->sets.push_back(a.state);
  } catch (const std::invalid_argument& e) {
    mixed.remove();
    state->remove();
    for (auto& a : sets)
      for (auto& mod : a.modules)  // whatever is still attached
        if (mod.host->module(mod.attached_as.empty() ? a.name : mod.attached_as))
          mod.host->detach(mod.attached_as.empty() ? a.name : mod.attached_as);
    for (auto& a : sets)
      if (a.state) a.state->remove();
    throw std::invalid_argument(std::string(e.what()).rfind("[mixed]", 0) == 0 ? e.what()
                                                                               : "[mixed] " + std::string(e.what()));
  }
  mixed.state = state;
  return mixed;
}

void check_composition_set(const SpecNode& n) {
  if (n.kind == SpecNode::Kind::Fuse)
    throw_error(kMixedTag,
                "fuse(...) at " + n.where +
                    " has no trained fusion weights; train the composition (modula train) and use its folder");
  if (n.kind == SpecNode::Kind::Route)
    throw_error(kMixedTag, "route(...)/moe(...) at " + n.where +
                               " routes by metadata or a trained router of its own; it cannot be one row's module set");
  for (const auto& c : n.children) check_composition_set(c);
}

Adapter composition_set(Backbone& model, const SpecNode& spec, const std::map<std::string, std::string>& folders,
                        const std::string& name, const std::string& id) {
  check_composition_set(spec);
  std::set<std::string> known;
  for (const auto& kv : folders) known.insert(kv.first);
  check_module_names(spec, known);
  std::map<std::string, Adapter> loaded;
  std::map<std::string, const Adapter*> members;
  Composition comp;
  try {
    int i = 0;
    for (const auto& m : module_names(spec)) {
      loaded.emplace(m, load_adapter(model, folders.at(m), id + "_" + std::to_string(i++)));
      members[m] = &loaded.at(m);
    }
    comp = apply_spec(model, spec, members, ComposeOptions().name(id));
    if (comp.inputs.size() > 1) throw_error(kMixedTag, "'" + name + "' applies more than one input module (prompt)");
  } catch (...) {
    remove_composition(comp);
    for (auto& [m, a] : loaded) a.remove();
    throw;
  }
  Adapter set;
  set.name = name;
  set.peft_type = kCompositionSetType;
  set.config = {{"peft_type", kCompositionSetType}, {"spec", to_string(spec)}};
  auto state = std::make_shared<ComposedSetState>();
  for (auto& [path, site] : comp.sites) {
    std::shared_ptr<SiteHost> host = site;
    set.modules.push_back({path, nullptr, host->module(id), {}, host, id});
  }
  for (auto& [m, a] : loaded)
    for (auto& mod : a.modules) {
      const auto as = mod.attached_as.empty() ? a.name : mod.attached_as;
      if (mod.module->site_kind() == SiteKind::Block && !mod.module->enabled) {  // runs inside a composite
        state->members.emplace_back(mod.host, as);
        continue;
      }
      set.modules.push_back(mod);
      set.modules.back().attached_as = as;
    }
  set.input = comp.inputs.empty() ? nullptr : comp.inputs.front();
  set.state = state;
  return set;
}

Adapter load_mixed(Backbone& model, const std::vector<std::pair<std::string, std::string>>& named_dirs,
                   const std::string& name, std::shared_ptr<RoutingContext> context) {
  std::vector<Adapter> sets;  // attached under their routing names until mixed
  try {
    for (const auto& [set_name, dir] : named_dirs) {
      if (set_name == kBaseAdapter)
        throw_error(kMixedTag, "module set name '" + set_name + "' is reserved for rows without modules");
      sets.push_back(load_adapter(model, dir, set_name));
    }
  } catch (...) {
    for (auto& a : sets) a.remove();
    throw;
  }
  return mix_adapters(std::move(sets), name, std::move(context));
}

torch::Tensor row_ids(const Adapter& mixed, const std::vector<std::string>& name_per_row) {
  if (mixed.peft_type != kMixedType)
    throw_error(kMixedTag, "'" + mixed.name + "' is a " + mixed.peft_type + " module set, not a mixed one");
  const auto& names = mixed.config.at("modules");
  std::vector<int64_t> ids;
  for (const auto& n : name_per_row) {
    if (n == kBaseAdapter) {
      ids.push_back(-1);
      continue;
    }
    auto it = std::find(names.begin(), names.end(), n);
    if (it == names.end())
      throw_error(kMixedTag, "unknown module set name '" + n + "' (known: " + kBaseAdapter + ", " + names.dump() + ")");
    ids.push_back(it - names.begin());
  }
  return torch::tensor(ids, torch::kLong);
}

void store_banks_as(const Adapter& mixed, torch::ScalarType dtype) {
  if (mixed.peft_type != kMixedType)
    throw_error(kMixedTag, "store_banks_as: '" + mixed.name + "' is a " + mixed.peft_type + ", not a mixed handle");
  for (const auto& am : mixed.modules)
    for (const auto& m : am.module->modules())
      if (auto* bank = dynamic_cast<LoraBankImpl*>(m.get())) bank->store_as(dtype);
}

void set_row_modules(const Adapter& mixed, const std::vector<std::string>& name_per_row) {
  auto ids = row_ids(mixed, name_per_row);
  const auto key = mixed.config.at("key").get<std::string>();
  mixed.context->set(key, ids);
  if (!mixed.config.contains("input_index")) return;
  auto index = torch::tensor(mixed.config["input_index"].get<std::vector<int64_t>>(), torch::kLong);
  mixed.context->set(key + ".input", torch::where(ids >= 0, index.index_select(0, ids.clamp_min(0)), ids));
}

}  // namespace modula
