// A composition spec applied to a model: validate where each module may go, then build
// one composite per block site (aggregation/*.h) and attach it.
#include "modula/composition/apply_spec.h"

#include <algorithm>

#include "modula/aggregation/average.h"
#include "modula/aggregation/parallel.h"
#include "modula/aggregation/prompt_concat.h"
#include "modula/aggregation/routed.h"
#include "modula/aggregation/stack.h"
#include "modula/composition/ia3_bank.h"
#include "modula/composition/input_bank.h"
#include "modula/composition/modular_linear.h"
#include "modula/composition/registry.h"
#include "modula/io/peft.h"
#include "modula/modules/ia3.h"
#include "modula/modules/lora.h"
#include "modula/modules/targets.h"
#include "modula/routing/fixed.h"
#include "modula/routing/softmax.h"
#include "modula/routing/top_k.h"

namespace modula {
namespace {

using Kind = SpecNode::Kind;
using json = nlohmann::json;

[[noreturn]] void bad(const SpecNode& n, const std::string& msg) {
  throw std::invalid_argument("[compose] " + (n.where.empty() ? std::string() : n.where + ": ") + msg);
}

// route(key, ...): a learned router when `key` names one, else fixed routing by metadata.
struct LearnedRoute {
  std::string kind;  // "" (metadata), softmax, softmax_token, smear, top
  int64_t k = 0;     // top-k
};

LearnedRoute learned_route(const std::string& key) {
  if (!learned_route_key(key)) return {};
  if (key.compare(0, 3, "top") == 0) return {"top", std::stoll(key.substr(3))};
  return {key, 0};
}

// One router per site for learned routing (the sites differ in width); it adds its losses
// (top-k: load balancing + z-loss) to aux_loss in training.
std::shared_ptr<RouterImpl> learned_router(const SpecNode& n, const LearnedRoute& r, int64_t features, int64_t M,
                                           const std::shared_ptr<RoutingContext>& ctx) {
  if (r.kind == "top") {
    if (r.k < 1 || r.k > M)
      bad(n, "route(" + n.name + ", …) selects " + std::to_string(r.k) + " of " + std::to_string(M) + " modules");
    return TopKRouter(TopKRouterOptions(features, M).k(r.k), ctx).ptr();
  }
  return SoftmaxRouter(SoftmaxRouterOptions(features, M).per_token(r.kind == "softmax_token"), ctx).ptr();
}

bool has_site_kind(const Adapter& a, SiteKind kind) {
  for (const auto& m : a.modules)
    if (m.module->site_kind() == kind) return true;
  return false;
}

std::string comma_joined(const std::vector<std::string>& names) {
  std::string out;
  for (const auto& n : names) out += (out.empty() ? "" : ", ") + n;
  return out;
}

// w̄ of avg's arguments (uniform when none is weighted).
std::vector<double> normalized_weights(const SpecNode& n) {
  std::vector<double> w;
  double sum = 0;
  for (const auto& c : n.children) sum += c.weight.value_or(1.0);
  for (const auto& c : n.children) w.push_back(c.weight.value_or(1.0) / sum);
  return w;
}

struct Builder {
  Backbone& model;
  const std::map<std::string, const Adapter*>& adapters;
  const std::map<std::string, FusionFolder>& fusion_folders;  // fuse node name → trained weights
  const ComposeOptions& options;
  Composition& comp;
  std::map<const SpecNode*, size_t> fusion_of;
  std::map<const SpecNode*, std::shared_ptr<RouterImpl>> router_of;
  std::map<std::string, double> linear_scale;      // linear-site adapters: Σ of their path weights
  std::set<std::string> frozen;                    // members of fuse nodes
  std::vector<const SpecNode*> linear_routes;      // route nodes with linear-site members, in spec order
  std::map<const SpecNode*, int64_t> route_index;  // route nodes in spec order: "route<j>" keys routers
  std::set<const SpecNode*> learned_nodes;         // route nodes that made a learned router

  // Numbers the route nodes in pre-order (router_keys: "route<j>.<site>").
  void number_routes(const SpecNode& n) {
    if (n.kind == Kind::Route) route_index.emplace(&n, static_cast<int64_t>(route_index.size()));
    for (const auto& c : n.children) number_routes(c);
  }
  void add_learned_router(const SpecNode& n, const std::string& site, std::shared_ptr<RouterImpl> router) {
    if (learned_nodes.insert(&n).second)
      comp.untrained.push_back(to_string(n) + ": new " + n.name + " router(s), freshly initialised");
    comp.routers.push_back(std::move(router));
    comp.router_keys.push_back("route" + std::to_string(route_index.at(&n)) + "." + site);
  }

  const Adapter& adapter(const SpecNode& n) const { return *adapters.at(n.name); }

  // Checks where every module sits; collects scales, fusions and routers (no changes yet).
  // `mixer`: "fuse"/"route" when under one; `top`: the root or an argument of a root stack.
  void plan(const SpecNode& n, double weight, const std::string& mixer, bool top, bool in_concat, bool root) {
    switch (n.kind) {
      case Kind::Module:
        return plan_module(n, weight, mixer, top, in_concat);
      case Kind::Concat:
        if (!top)
          bad(n, "concat(…) joins prompts and must be at the top level (the spec or an argument of the outer stack)");
        for (const auto& c : n.children) plan(c, weight, mixer, false, true, false);
        return;
      case Kind::Stack:
        for (const auto& c : n.children) plan(c, weight, mixer, root, false, false);
        return;
      case Kind::Parallel:
        for (const auto& c : n.children) plan(c, weight, mixer, false, false, false);
        return;
      case Kind::Average: {
        auto w = normalized_weights(n);
        for (size_t i = 0; i < n.children.size(); ++i) plan(n.children[i], weight * w[i], mixer, false, false, false);
        return;
      }
      case Kind::Fuse: {
        json config = options.fusion();
        if (!n.name.empty()) config = fusion_folders.at(n.name).config;
        for (const char* k : {"peft_type", "adapters", "sites", "inference_mode"}) config.erase(k);
        AdapterFusion f;
        f.name = n.name.empty() ? "fuse" + std::to_string(comp.fusions.size()) : n.name;
        for (const auto& c : n.children) f.adapters.push_back(to_string(c));
        f.config = FusionOptions::from_json(config, 1).to_json();  // validates
        fusion_of[&n] = comp.fusions.size();
        comp.fusions.push_back(std::move(f));
        for (const auto& c : n.children) {
          plan(c, weight, "fuse", false, false, false);
          for (const auto& name : module_names(c)) frozen.insert(name);
        }
        return;
      }
      case Kind::Route: {
        if (input_route(n)) return plan_input_route(n, top);
        if (learned_route(n.name).kind.empty()) {  // fixed by metadata: one router shared by every site
          auto router =
              FixedRouter(FixedRouterOptions(static_cast<int64_t>(n.children.size())).key(n.name), comp.context);
          router_of[&n] = router.ptr();
          comp.routers.push_back(router.ptr());
          comp.router_keys.emplace_back();  // no parameters
        }
        for (const auto& c : n.children) {
          if (c.kind == Kind::Module && !adapter(c).input && has_site_kind(adapter(c), SiteKind::Linear)) {
            if (std::find(linear_routes.begin(), linear_routes.end(), &n) == linear_routes.end())
              linear_routes.push_back(&n);  // routed per Linear site over a bank (build_linear_routes)
            continue;
          }
          plan(c, weight, "route", false, false, false);
        }
        return;
      }
    }
  }

  // route(key, p_0, p_1, ...) over prompts or prefixes: one InputBank, row i using p_{ids[i]}.
  bool input_route(const SpecNode& n) const {
    if (n.kind != Kind::Route) return false;
    return std::any_of(n.children.begin(), n.children.end(),
                       [&](const SpecNode& c) { return c.kind == Kind::Module && adapter(c).input; });
  }
  void plan_input_route(const SpecNode& n, bool top) {
    if (!learned_route(n.name).kind.empty())
      bad(n, "route(" + n.name +
                 ", …) over prompt modules: input modules are routed by metadata only (route(task, …) "
                 "or another metadata key); learned routing needs site modules");
    if (!top)
      bad(n, "route(…) over prompt modules must be at the top level (the spec or an argument of the outer stack)");
    for (const auto& c : n.children)
      if (c.kind != Kind::Module || !adapter(c).input)
        bad(c, "route(…) over prompt modules takes only PROMPT_TUNING or only PREFIX_TUNING modules; '" + to_string(c) +
                   "' is not one");
  }

  void plan_module(const SpecNode& n, double weight, const std::string& mixer, bool top, bool in_concat) {
    const auto& a = adapter(n);
    const auto what = "'" + n.name + "' (" + a.peft_type + ")";
    if (a.input) {
      if (!top && !in_concat) bad(n, "prompt " + what + " can only be stacked at the top level or joined by concat(…)");
      if (in_concat && !std::dynamic_pointer_cast<PromptTuningImpl>(a.input))
        bad(n, "concat joins PROMPT_TUNING modules; " + what + " is not one");
      return;
    }
    if (in_concat) bad(n, "concat joins prompt modules; " + what + " is not a prompt");
    if (has_site_kind(a, SiteKind::Linear)) {
      if (!mixer.empty())
        bad(n, "linear-site adapter " + what + " cannot be under " + mixer +
                   "(…): fuse combines block-site adapters (MODULA_BOTTLENECK); route takes LoRA and (IA)³ adapters "
                   "only as its direct arguments");
      linear_scale[n.name] += weight;
    }
  }

  // The module the node makes at block site `path`, or null where none of its members has
  // a module there.
  std::shared_ptr<SiteModule> build(const SpecNode& n, const std::string& path, BlockSite& site, int64_t site_index) {
    if (n.kind == Kind::Module) {
      for (const auto& m : adapter(n).modules)
        if (m.site == path && m.module->site_kind() == SiteKind::Block) return m.module;
      return nullptr;
    }
    if (n.kind == Kind::Concat) return nullptr;  // input composition
    std::vector<std::shared_ptr<SiteModule>> kids;
    std::vector<double> weights;
    auto w = normalized_weights(n);
    bool any = false;
    for (size_t i = 0; i < n.children.size(); ++i) {
      auto k = build(n.children[i], path, site, site_index);
      any = any || k;
      if (!k && n.kind != Kind::Route) continue;  // absent: the identity, contributes nothing
      kids.push_back(k ? k : IdentityBlock().ptr());
      weights.push_back(w[i]);
    }
    if (!any) return nullptr;
    switch (n.kind) {
      case Kind::Stack:
        return kids.size() == 1 ? kids[0] : Stack(kids).ptr();
      case Kind::Parallel:
        return kids.size() == 1 ? kids[0] : Parallel(kids).ptr();
      case Kind::Average:
        return kids.size() == 1 && weights[0] == 1.0 ? kids[0] : Average(kids, weights, false).ptr();
      case Kind::Route: {
        auto learned = learned_route(n.name);
        if (learned.kind.empty()) return Routed(router_of.at(&n), kids, /*owns_router=*/false).ptr();
        if (learned.kind == "smear")
          bad(n, "route(smear, …) averages parameters: it takes LoRA adapters, not block-site modules");
        auto router = learned_router(n, learned, site.features, static_cast<int64_t>(kids.size()), comp.context);
        add_learned_router(n, path, router);
        auto p = site.parameters().front();
        router->to(p.device(), p.scalar_type());
        return Routed(router, kids, /*owns_router=*/true).ptr();
      }
      case Kind::Fuse: {
        auto& record = comp.fusions[fusion_of.at(&n)];
        auto o = FusionOptions::from_json(record.config, site.features);
        o.seed(o.seed() + static_cast<uint64_t>(site_index));  // distinct W_q, W_k per site
        auto f = Fusion(o, kids).ptr();
        auto p = site.parameters().front();
        f->to(p.device(), p.scalar_type());
        record.sites.emplace_back(path, f);
        return f;
      }
      default:
        return nullptr;
    }
  }

  void collect_inputs(const SpecNode& n, bool root) {
    if (n.kind == Kind::Module && adapter(n).input) comp.inputs.push_back(adapter(n).input);
    if (n.kind == Kind::Concat) {
      std::vector<std::shared_ptr<PromptTuningImpl>> prompts;
      for (const auto& c : n.children) prompts.push_back(std::dynamic_pointer_cast<PromptTuningImpl>(adapter(c).input));
      comp.inputs.push_back(ConcatenatedPrompt(prompts).ptr());
    }
    if (input_route(n)) {  // plan_input_route checked the members; InputBank checks their kinds and shapes
      std::vector<std::shared_ptr<InputModule>> members;
      for (const auto& c : n.children) members.push_back(adapter(c).input);
      comp.inputs.push_back(InputBank(members, comp.context, InputBankOptions().key(n.name)).ptr());
    }
    if (n.kind == Kind::Stack && root)
      for (const auto& c : n.children) collect_inputs(c, false);
  }

  // route(key, a, b, ...) over LoRA or (IA)³ adapters: per Linear site a ModularLinear over
  // a view bank of the members (they stay attached, switched off; gradients reach them).
  void build_linear_routes(const SpecNode& n) {
    const size_t C = n.children.size();
    using Slot = std::pair<std::shared_ptr<LinearImpl>, std::vector<std::shared_ptr<SiteModule>>>;
    std::map<std::string, Slot> sites;
    std::map<std::string, std::string> kind_at;  // site → "LoRA" / "(IA)³" of its first member
    std::vector<std::string> order;
    for (size_t i = 0; i < C; ++i) {
      const auto& c = n.children[i];
      if (c.kind != Kind::Module || adapter(c).input) continue;
      for (const auto& m : adapter(c).modules) {
        if (m.module->site_kind() != SiteKind::Linear) continue;
        const bool lora = std::dynamic_pointer_cast<LoraImpl>(m.module) != nullptr;
        if (!lora && !std::dynamic_pointer_cast<Ia3Impl>(m.module))
          bad(c, "route(…) over Linear-site modules takes LoRA or (IA)³ adapters; '" + c.name + "' is " +
                     adapter(c).peft_type);
        auto& slot = sites[m.site];
        if (!slot.first) {
          slot = {m.layer, std::vector<std::shared_ptr<SiteModule>>(C)}, order.push_back(m.site);
          kind_at[m.site] = lora ? "LoRA" : "(IA)³";
        } else if (kind_at[m.site] != (lora ? "LoRA" : "(IA)³")) {
          bad(c, "route(…) mixes LoRA and (IA)³ modules at " + m.site + " ('" + c.name +
                     "'): a routed site takes one kind");
        }
        slot.second[i] = m.module;
      }
    }
    const auto learned = learned_route(n.name);
    for (const auto& path : order) {
      auto& [layer, members] = sites[path];
      auto router = router_of.count(&n) ? router_of.at(&n) : nullptr;
      if (!learned.kind.empty()) {
        router = learned_router(n, learned, layer->options.in_features(), static_cast<int64_t>(C), comp.context);
        router->to(layer->weight.device(), layer->weight.scalar_type());
        add_learned_router(n, path, router);
      }
      auto o = ModularLinearOptions().owns_router(!learned.kind.empty());
      if (learned.kind == "smear") o.aggregation(Aggregation::ParameterAverage);
      std::shared_ptr<ModularLinearImpl> routed;
      if (kind_at[path] == "LoRA") {
        std::vector<std::shared_ptr<LoraImpl>> loras;
        for (const auto& m : members) loras.push_back(std::dynamic_pointer_cast<LoraImpl>(m));
        routed = std::make_shared<ModularLinearImpl>(LoraBankImpl::view(loras), router, o);
      } else {
        std::vector<std::shared_ptr<Ia3Impl>> ia3s;
        for (const auto& m : members) ia3s.push_back(std::dynamic_pointer_cast<Ia3Impl>(m));
        routed = std::make_shared<ModularLinearImpl>(Ia3BankImpl::view(ia3s), router, o);
      }
      layer->attach(comp.name, routed);
      comp.linear_sites.emplace_back(path, layer);
      for (auto& m : members)
        if (m && m->enabled) m->enabled = false, comp.switched_off.push_back(m);
    }
  }

  void run() {
    number_routes(comp.spec);
    plan(comp.spec, 1.0, "", true, false, true);
    for (const auto* n : linear_routes) build_linear_routes(*n);
    collect_inputs(comp.spec, true);
    int64_t index = 0;
    for (auto& [path, site] : block_sites(model)) {
      auto root = std::dynamic_pointer_cast<CompositeImpl>(build(comp.spec, path, *site, index));
      if (!root) continue;  // nothing here, or a single member that runs natively
      attach_composition(*site, comp.name, root);
      comp.sites.emplace_back(path, site);
      ++index;
    }
    for (auto& f : comp.fusions) {
      auto it = fusion_folders.find(f.name);
      if (it != fusion_folders.end())
        load_fusion_weights(f, it->second);
      else if (!f.sites.empty())
        comp.untrained.push_back("fuse(" + comma_joined(f.adapters) + "): new fusion weights, freshly initialised");
    }
    for (const auto& [name, scale] : linear_scale) {
      if (scale == 1.0) continue;
      auto* a = const_cast<Adapter*>(adapters.at(name));
      for (const auto& m : a->modules)
        if (m.module->site_kind() == SiteKind::Linear) comp.previous_scales[name] = m.module->scale;
      a->set_scale(scale);
    }
    for (const auto& name : frozen)
      for (auto& p : adapters.at(name)->parameters()) p.set_requires_grad(false);
  }
};

Composition compose(Backbone& model, Composition comp, const std::map<std::string, const Adapter*>& adapters,
                    const std::map<std::string, FusionFolder>& fusion_folders, const ComposeOptions& options) {
  options.validate();
  std::set<std::string> known;
  for (const auto& [name, a] : adapters) {
    if (!a) throw std::invalid_argument("[compose] module '" + name + "' is null");
    known.insert(name);
  }
  check_module_names(comp.spec, known);
  comp.name = options.name();
  comp.options = options;
  if (options.context()) comp.context = options.context();
  comp.members = adapters;
  try {
    Builder builder{model, adapters, fusion_folders, options, comp, {}, {}, {}, {}, {}, {}, {}};
    builder.run();
  } catch (...) {
    remove_composition(comp);
    throw;
  }
  return comp;
}

// A name whose folder is a MODULA_FUSION becomes fuse(<its members>), named after it.
SpecNode expand_fusions(const SpecNode& n, const std::map<std::string, FusionFolder>& fusions) {
  if (n.kind == Kind::Module) {
    auto it = fusions.find(n.name);
    if (it == fusions.end()) return n;
    SpecNode fuse;
    fuse.kind = Kind::Fuse;
    fuse.name = n.name;
    fuse.weight = n.weight;
    fuse.where = n.where;
    for (const auto& member : it->second.adapters) {
      SpecNode m;
      m.name = member;
      m.where = n.where + " (member of fusion '" + n.name + "')";
      fuse.children.push_back(m);
    }
    return fuse;
  }
  SpecNode out = n;
  for (auto& c : out.children) c = expand_fusions(c, fusions);
  return out;
}

}  // namespace

void ComposeOptions::validate() const {
  if (name().empty() || name().find('.') != std::string::npos)
    throw std::invalid_argument("[compose] name '" + name() + "' must be non-empty and contain no '.'");
  if (!fusion().is_object())
    throw std::invalid_argument("[compose] fusion options must be a JSON object, got " + fusion().dump());
}

void Composition::prepare(Backbone& model, BackboneInput& in) const {
  KVCache scratch;
  for (const auto& m : inputs) m->prepare(model, in, scratch);
}

BackboneOutput Composition::forward(Backbone& model, BackboneInput in) const {
  prepare(model, in);
  return model.forward(in);
}

std::vector<torch::Tensor> Composition::parameters() const {
  std::vector<torch::Tensor> out;
  for (const auto& f : fusions)
    for (auto& p : f.parameters()) out.push_back(p);
  return out;
}

Composition apply_spec(Backbone& model, const SpecNode& spec, const std::map<std::string, const Adapter*>& adapters,
                       const ComposeOptions& options) {
  Composition comp;
  comp.spec = spec;
  return compose(model, std::move(comp), adapters, {}, options);
}

Composition apply_spec(Backbone& model, const SpecNode& spec, const std::map<std::string, std::string>& folders,
                       const ComposeOptions& options) {
  std::set<std::string> known;
  for (const auto& kv : folders) known.insert(kv.first);
  check_module_names(spec, known);
  std::map<std::string, FusionFolder> fusions;
  for (const auto& name : module_names(spec)) {
    const auto& dir = folders.at(name);
    if (io::read_peft_folder(dir).peft_type == "MODULA_FUSION") fusions.emplace(name, read_fusion_folder(dir));
  }
  Composition comp;
  comp.spec = expand_fusions(spec, fusions);
  check_module_names(comp.spec, known);  // fusion members must be named too
  std::map<std::string, const Adapter*> members;
  try {
    for (const auto& name : module_names(comp.spec)) {
      comp.owned.emplace(name, load_adapter(model, folders.at(name), name));
      members[name] = &comp.owned.at(name);
    }
  } catch (...) {
    for (auto& [name, a] : comp.owned) remove_adapter(a);
    throw;
  }
  return compose(model, std::move(comp), members, fusions, options);
}

void remove_composition(Composition& comp) {
  for (auto& [path, layer] : comp.linear_sites)
    if (layer->module(comp.name)) layer->detach(comp.name);
  comp.linear_sites.clear();
  for (auto& m : comp.switched_off) m->enabled = true;
  comp.switched_off.clear();
  for (auto& [path, site] : comp.sites)
    if (site->module(comp.name)) detach_composition(*site, comp.name);
  comp.sites.clear();
  for (const auto& [name, scale] : comp.previous_scales)
    if (auto it = comp.members.find(name); it != comp.members.end()) const_cast<Adapter*>(it->second)->set_scale(scale);
  comp.previous_scales.clear();
  comp.untrained.clear();
  for (auto& f : comp.fusions) f.sites.clear();
  for (auto& [name, a] : comp.owned) remove_adapter(a);
  comp.owned.clear();
  comp.members.clear();
  comp.inputs.clear();
}

}  // namespace modula
