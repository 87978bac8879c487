// Registry rows whose modules are not only site/input modules: their Adapter carries an
// AdapterState (the weights they change in place, a hypernetwork, a fusion's layers).
#include "composition/module_rows.h"

#include <stdexcept>

#include "modula/aggregation/fusion.h"
#include "modula/composition/moe_lora.h"
#include "modula/io/peft.h"
#include "modula/modules/bitfit.h"
#include "modula/modules/hypernetwork.h"
#include "modula/modules/lottery_ticket.h"
#include "modula/modules/sparse_ft.h"
#include "modula/modules/targets.h"
#include "modula/util/error.h"

namespace modula {
namespace {

using json = nlohmann::json;

constexpr std::string_view kModuleRowsTag = "registry";

template <typename T>
T field(const json& c, const char* key, T fallback) {  // the shared typed reader, with this file's tag
  return io::config_field<T>(c, key, fallback, "[registry]");
}

Adapter handle(const std::string& type, const std::string& name, const json& config,
               std::shared_ptr<AdapterState> state) {
  Adapter a;
  a.name = name;
  a.peft_type = type;
  a.config = config;
  a.state = std::move(state);
  return a;
}

// ---- MODULA_SPARSE_FT ------------------------------------------------------------------
SparseDiffOptions sparse_options(const json& c) {
  SparseDiffOptions o;
  o.target_parameters(field<std::vector<std::string>>(c, "target_parameters", {}));
  o.exclude_parameters(field<std::vector<std::string>>(c, "exclude_parameters", {}));
  o.density(field<double>(c, "density", 0.01));
  o.k(field<int64_t>(c, "k", 0));
  o.validate();
  return o;
}

// A loaded diff lives in the weights (scale·φ); a fresh one trains through attach(). With
// mask: lottery_ticket the mask is not known yet: a trainer first runs the dense phase over
// the ticket's parameters, then end_dense_phase() selects the mask (LT-SFT).
struct SparseState : AdapterState {
  SparseDiff diff{nullptr};
  std::unique_ptr<LotteryTicket> ticket;
  int64_t dense_steps = 0;
  Backbone* model = nullptr;
  double scale = 1.0;
  bool on = true;
  std::vector<torch::Tensor> parameters() const override { return ticket ? ticket->parameters() : diff->parameters(); }
  int64_t dense_phase_steps() const override { return ticket ? dense_steps : 0; }
  void end_dense_phase() override {
    if (!ticket) return;
    diff = ticket->select();
    ticket.reset();
    diff->attach(*model);
  }
  void set_enabled(bool enable) override {
    if (enable == on) return;
    if (ticket)
      throw_error(kModuleRowsTag, "a lottery-ticket sparse diff before its dense phase cannot be switched off");
    if (diff->attached()) throw_error(kModuleRowsTag, "a sparse diff in training cannot be switched off");
    enable ? diff->apply(*model, scale) : diff->remove(*model, scale);
    on = enable;
  }
  void set_scale(double s) override {
    if (ticket || diff->attached()) throw_error(kModuleRowsTag, "a sparse diff in training has no scale");
    if (on) diff->remove(*model, scale), diff->apply(*model, s);
    scale = s;
  }
  void merge() override {}  // already in the weights
  void refresh() override {
    if (diff && diff->attached()) diff->refresh();
  }
  void remove() override {
    if (ticket) {
      ticket.reset();  // θ₀ restored
      return;
    }
    if (diff->attached())
      diff->detach();
    else
      set_enabled(false);
  }
};

}  // namespace

ModuleType sparse_ft_row() {
  ModuleType t;
  t.peft_type = "MODULA_SPARSE_FT";
  t.summary = "sparse fine-tuning: K entries φ added to chosen weights (LT-SFT)";
  t.build = [](Backbone& m, const json& c, const ModuleEnv& env) {
    auto s = std::make_shared<SparseState>();
    s->model = &m;
    const auto mask = field<std::string>(c, "mask", "random");
    if (mask == "lottery_ticket") {  // LT-SFT: the mask comes from a dense phase of dense_steps
      s->dense_steps = field<int64_t>(c, "dense_steps", 100);
      if (s->dense_steps < 1)
        throw_error(kModuleRowsTag,
                    "MODULA_SPARSE_FT 'dense_steps' must be >= 1, got " + std::to_string(s->dense_steps));
      s->ticket = std::make_unique<LotteryTicket>(m, sparse_options(c));
      return handle("MODULA_SPARSE_FT", env.name, c, s);
    }
    if (mask != "random")
      throw_error(kModuleRowsTag, "MODULA_SPARSE_FT 'mask' must be random or lottery_ticket, got '" + mask + "'");
    s->diff = random_sparse_diff(m, sparse_options(c), field<uint64_t>(c, "seed", 0));
    s->diff->attach(m);  // trainable: θ₀ + scatter(values) in every forward
    return handle("MODULA_SPARSE_FT", env.name, c, s);
  };
  t.load = [](Backbone& m, const io::PeftFolder& folder, const ModuleEnv& env) {
    auto s = std::make_shared<SparseState>();
    s->model = &m;
    s->diff = load_sparse_diff(m, folder.dir);
    s->diff->apply(m, 1.0);
    return handle("MODULA_SPARSE_FT", env.name, folder.config, s);
  };
  t.save = [](const Adapter& a, const std::string& dir) {
    auto s = std::dynamic_pointer_cast<SparseState>(a.state);
    if (!s) throw_error(kModuleRowsTag, "adapter '" + a.name + "' has no sparse diff to save");
    if (s->ticket)
      throw_error(kModuleRowsTag, "adapter '" + a.name + "': its mask is not selected yet (LT-SFT dense phase)");
    save_sparse_diff(s->diff, dir);
  };
  return t;
}

namespace {

// ---- MODULA_BITFIT ---------------------------------------------------------------------
// The tuned biases θ over the ones they replaced θ₀: switched off, θ₀; scaled, θ₀ + s·(θ − θ₀).
struct BitFitState : AdapterState {
  BitFit bitfit{nullptr};
  std::vector<torch::Tensor> params, original, tuned;
  double scale = 1.0;
  bool on = true;

  std::vector<torch::Tensor> parameters() const override { return params; }
  void capture() {  // the tuned values, while they are what the parameters hold
    if (!on || scale != 1.0) return;
    tuned.clear();
    for (const auto& p : params) tuned.push_back(p.detach().clone());
  }
  void write(double k) {
    torch::NoGradGuard no_grad;
    for (size_t i = 0; i < params.size(); ++i) params[i].copy_(original[i] + k * (tuned[i] - original[i]));
  }
  void set_enabled(bool enable) override {
    if (enable == on) return;
    capture();
    on = enable;
    write(on ? scale : 0.0);
  }
  void set_scale(double s) override {
    capture();
    scale = s;
    if (on) write(s);
  }
  void remove() override { set_enabled(false); }
};

std::map<std::string, torch::Tensor> biases(Backbone& m) {
  std::map<std::string, torch::Tensor> out;
  for (auto& p : m.named_parameters())
    if (p.key().size() > 5 && p.key().compare(p.key().size() - 5, 5, ".bias") == 0) out[p.key()] = p.value();
  return out;
}

std::map<std::string, torch::Tensor> copies(const std::map<std::string, torch::Tensor>& tensors) {
  std::map<std::string, torch::Tensor> out;
  for (const auto& [k, v] : tensors) out[k] = v.detach().clone();
  return out;
}

std::shared_ptr<BitFitState> bitfit_state(Backbone& m, BitFit bitfit,
                                          const std::map<std::string, torch::Tensor>& before) {
  auto s = std::make_shared<BitFitState>();
  s->bitfit = bitfit;
  auto now = biases(m);
  for (const auto& name : bitfit->names()) s->params.push_back(now.at(name)), s->original.push_back(before.at(name));
  return s;
}

}  // namespace

ModuleType bitfit_row() {
  ModuleType t;
  t.peft_type = "MODULA_BITFIT";
  t.summary = "bias-only fine-tuning (BitFit)";
  t.build = [](Backbone& m, const json& c, const ModuleEnv& env) {
    BitFitOptions o;
    o.target_parameters(field<std::vector<std::string>>(c, "target_parameters", {}));
    o.exclude_parameters(field<std::vector<std::string>>(c, "exclude_parameters", {}));
    auto before = copies(biases(m));
    BitFit bitfit(m, o);
    return handle("MODULA_BITFIT", env.name, c, bitfit_state(m, bitfit, before));
  };
  t.load = [](Backbone& m, const io::PeftFolder& folder, const ModuleEnv& env) {
    auto before = copies(biases(m));
    auto bitfit = load_bitfit(m, folder.dir);
    return handle("MODULA_BITFIT", env.name, folder.config, bitfit_state(m, bitfit, before));
  };
  t.save = [](const Adapter& a, const std::string& dir) {
    auto s = std::dynamic_pointer_cast<BitFitState>(a.state);
    if (!s) throw_error(kModuleRowsTag, "adapter '" + a.name + "' has no BitFit biases to save");
    s->bitfit->save(dir);
  };
  return t;
}

namespace {

// ---- MODULA_HYPER_LORA -----------------------------------------------------------------
struct HyperState : AdapterState {
  HyperLora hyper{nullptr};
  Backbone* model = nullptr;
  std::string name;
  double scale = 1.0;
  std::vector<torch::Tensor> parameters() const override { return hyper->parameters(); }
  void each(const std::function<void(SiteModule&)>& f) {
    for (const auto& site : linear_sites(*model))
      if (auto m = site.second->module(name)) f(*m);
  }
  void set_enabled(bool on) override {
    each([on](SiteModule& m) { m.enabled = on; });
  }
  void set_scale(double s) override {
    scale = s;
    each([s](SiteModule& m) { m.scale = s; });
  }
  // W ← W + scale · alpha/r · B A for the current (single) task; the hypernetwork detaches.
  void merge() override {
    torch::NoGradGuard no_grad;
    auto sites = linear_sites(*model);
    for (const auto& w : hyper->modules_for_embedding(hyper->task_embedding()[0]))
      for (auto& [path, layer] : sites)
        if (path == w.site)
          layer->add_to_weight((scale * hyper->options.scaling()) *
                               torch::matmul(w.lora_B, w.lora_A).to(layer->weight.dtype()));
    hyper->detach();
  }
  void remove() override { hyper->detach(); }
};

Adapter hyper_handle(Backbone& m, HyperLora hyper, const ModuleEnv& env) {
  const std::string key = hyper->options.routing_key();
  if (key != "task" && env.context) {  // routed by a metadata field: always per row from the context
    hyper->task_source = [ctx = env.context, key] {
      if (!ctx->has(key))
        throw_error(kModuleRowsTag, "the hypernetwork routes by '" + key +
                                        "', which the RoutingContext does not hold (modula generate: --meta " + key +
                                        "=ID)");
      return ctx->get(key);
    };
  } else if (env.task >= 0) {
    hyper->set_task_ids(torch::tensor({env.task}, torch::kLong));
  } else if (env.context) {  // per row, from the routing metadata
    hyper->task_source = [ctx = env.context] { return ctx->has("task") ? ctx->get("task") : torch::Tensor(); };
  }
  auto s = std::make_shared<HyperState>();
  s->hyper = hyper, s->model = &m, s->name = env.name;
  auto a = handle(kHyperLoraType, env.name, hyper->config(), s);
  a.context = env.context;
  return a;
}

}  // namespace

ModuleType hyper_lora_row() {
  ModuleType t;
  t.peft_type = kHyperLoraType;
  t.summary = "hypernetwork generating every site's LoRA from task and site embeddings";
  t.build = [](Backbone& m, const json& c, const ModuleEnv& env) {
    HyperLora hyper(m, hyper_lora_options(c, "module config"));
    hyper->attach(m, env.name);
    return hyper_handle(m, hyper, env);
  };
  t.load = [](Backbone& m, const io::PeftFolder& folder, const ModuleEnv& env) {
    return hyper_handle(m, load_hyper_lora(m, folder.dir, env.name), env);
  };
  t.save = [](const Adapter& a, const std::string& dir) {
    auto s = std::dynamic_pointer_cast<HyperState>(a.state);
    if (!s) throw_error(kModuleRowsTag, "adapter '" + a.name + "' has no hypernetwork to save");
    save_hyper_lora(*s->hyper, dir);
  };
  return t;
}

namespace {

// ---- MODULA_FUSION ---------------------------------------------------------------------
struct FusionState : AdapterState {
  AdapterFusion fusion;
  std::vector<torch::Tensor> parameters() const override { return fusion.parameters(); }
  void set_enabled(bool on) override {
    for (auto& [site, f] : fusion.sites) f->enabled = on;
  }
  bool mergeable() const override { return false; }
  void remove() override { remove_fusion(fusion); }
};

std::vector<const Adapter*> members_of(const std::vector<std::string>& names, const ModuleEnv& env,
                                       const std::string& where) {
  std::vector<const Adapter*> out;
  for (const auto& n : names) {
    auto it = env.members.find(n);
    if (it == env.members.end())
      throw_error(kModuleRowsTag, where + ": member adapter '" + n +
                                      "' is not loaded (load the fused adapters first and pass them as members)");
    out.push_back(it->second);
  }
  return out;
}

Adapter fusion_handle(AdapterFusion fusion, const std::string& name) {
  auto s = std::make_shared<FusionState>();
  s->fusion = std::move(fusion);
  json config = s->fusion.config;
  config["adapters"] = s->fusion.adapters;
  return handle("MODULA_FUSION", name, config, s);
}

}  // namespace

ModuleType fusion_row() {
  ModuleType t;
  t.peft_type = "MODULA_FUSION";
  t.summary = "AdapterFusion: attention over member adapters' outputs";
  t.build = [](Backbone& m, const json& c, const ModuleEnv& env) {
    auto names = field<std::vector<std::string>>(c, "adapters", {});
    if (names.empty()) throw_error(kModuleRowsTag, "MODULA_FUSION config needs \"adapters\": the member adapter names");
    json options = c;
    options.erase("adapters"), options.erase("peft_type");
    return fusion_handle(add_fusion(m, members_of(names, env, "MODULA_FUSION config"), options, env.name), env.name);
  };
  t.load = [](Backbone& m, const io::PeftFolder& folder, const ModuleEnv& env) {
    const auto& dir = folder.dir;
    return fusion_handle(load_fusion(m, dir, members_of(read_fusion_folder(dir).adapters, env, dir), env.name),
                         env.name);
  };
  t.save = [](const Adapter& a, const std::string& dir) {
    auto s = std::dynamic_pointer_cast<FusionState>(a.state);
    if (!s) throw_error(kModuleRowsTag, "adapter '" + a.name + "' has no fusion to save");
    save_fusion(s->fusion, dir);
  };
  return t;
}

// ---- MODULA_MOE_LORA -------------------------------------------------------------------
// Keys named like HF Mixtral's config: num_experts, num_experts_per_tok, router_aux_loss_coef,
// router_z_loss_coef, norm_topk_prob; LoRA's r, lora_alpha, target_modules.
Adapter moe_lora_build(Backbone& m, const json& c, const ModuleEnv& env) {
  auto o = MoeLoraOptions(field<int64_t>(c, "num_experts", 0))
               .r(field<int64_t>(c, "r", 8))
               .alpha(field<double>(c, "lora_alpha", 8.0))
               .k(field<int64_t>(c, "num_experts_per_tok", 2))
               .noisy(field<bool>(c, "noisy_gating", false))
               .normalize(field<bool>(c, "norm_topk_prob", true))
               .load_balance_coef(field<double>(c, "router_aux_loss_coef", 0.01))
               .z_loss_coef(field<double>(c, "router_z_loss_coef", 0.001))
               .name(env.name)
               .context(env.context ? env.context : std::make_shared<RoutingContext>());
  if (!c.contains("target_modules")) throw_error(kModuleRowsTag, "MODULA_MOE_LORA config needs \"target_modules\"");
  return add_moe_lora(m, c, o);
}

}  // namespace modula
