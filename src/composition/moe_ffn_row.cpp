// Registry row MODULA_MOE_FFN: the model's feed-forward blocks become MoE FFN blocks
// (composition/moe_ffn.h), either by MoEfication (Zhang et al. 2022, moefication.h: the
// dense FFN's neurons split into E experts by balanced k-means + a top-k router trained by
// router distillation) or by sparse upcycling (Komatsuzaki et al. 2023, moe_upcycle.h: E
// copies of the FFN + a fresh top-k router). Build clusters or copies from the model's
// current FFNs; save writes every site's experts and router (PEFT layout, keys
// "base_model.model.<site>.<MoeFfn parameter>"); load rebuilds the blocks from those
// tensors (no clustering). Switched off, the sites run their dense FFNs again.
#include <cmath>
#include <functional>
#include <map>
#include <set>
#include <stdexcept>

#include "composition/module_rows.h"
#include "modula/composition/moe_upcycle.h"
#include "modula/composition/moefication.h"
#include "modula/io/peft.h"
#include "modula/modules/targets.h"
#include "modula/routing/top_k.h"
#include "modula/util/error.h"

namespace modula {
namespace {

using json = nlohmann::json;

constexpr std::string_view kMoeFfnRowTag = "moe ffn";
const std::string kType = "MODULA_MOE_FFN";

// Keys that only some inits read; the others reject them.
const std::map<std::string, std::set<std::string>> kInitKeys = {{"router_distillation_coef", {"moefy"}},
                                                                {"kmeans_iterations", {"moefy"}},
                                                                {"seed", {"moefy"}},
                                                                {"noisy_gating", {"upcycle", "random"}},
                                                                {"dropless", {"upcycle", "random"}},
                                                                {"capacity_factor", {"upcycle", "random"}},
                                                                {"expert_size", {"random"}},
                                                                {"init_std", {"random"}}};

// The config with every default resolved (names like HF Mixtral's where it has them).
struct MoeConfig {
  std::string init;  // "upcycle", "moefy" or "random"
  int64_t num_experts = 0, k = 2;
  int64_t expert_size = 0;      // random: neurons per expert (0 = the dense FFN's)
  double init_std = 0.02;       // random: expert weights ~ N(0, init_std²) (HF _init_weights)
  std::vector<int64_t> layers;  // empty = every layer
  double aux = 0, z = 0, distillation = 1.0;
  int64_t kmeans_iterations = 20;
  uint64_t seed = 0;
  bool noisy = false, dropless = true, train_experts = true;
  double capacity_factor = 1.25;

  bool upcycle() const { return init == "upcycle"; }
  bool random() const { return init == "random"; }
  json to_json() const {
    json c = {{"peft_type", kType},         {"init", init},
              {"num_experts", num_experts}, {"num_experts_per_tok", k},
              {"layers", layers},           {"router_aux_loss_coef", aux},
              {"router_z_loss_coef", z},    {"train_experts", train_experts}};
    if (upcycle() || random()) {
      c["noisy_gating"] = noisy, c["dropless"] = dropless, c["capacity_factor"] = capacity_factor;
      if (random()) c["expert_size"] = expert_size, c["init_std"] = init_std;
    } else {
      c["router_distillation_coef"] = distillation, c["kmeans_iterations"] = kmeans_iterations, c["seed"] = seed;
    }
    return c;
  }
};

// `where` names the source in errors ("module config", a folder's adapter_config.json).
MoeConfig parse_config(const json& c, const std::string& where) {
  const std::string tag = "[moe ffn] " + where + ":";
  auto field = [&](const char* key, auto fallback) { return io::config_field(c, key, fallback, tag); };
  MoeConfig o;
  o.init = field("init", std::string());
  if (o.init != "upcycle" && o.init != "moefy" && o.init != "random")
    throw_error<ConfigError>(kMoeFfnRowTag, where + ": 'init' must be \"upcycle\", \"moefy\" or \"random\", got " +
                                                (c.contains("init") ? c["init"].dump() : std::string("nothing")));
  const bool up = o.upcycle() || o.random();  // top-k routing with router losses, every expert trains
  for (const auto& [key, inits] : kInitKeys)
    if (c.contains(key) && !c[key].is_null() && !inits.count(o.init)) {
      std::string list;
      for (const auto& i : inits) list += (list.empty() ? "" : " or ") + i;
      throw_error<ConfigError>(kMoeFfnRowTag, where + ": '" + key + "' applies to init: " + list + " only");
    }
  o.num_experts = field("num_experts", int64_t{0});
  if (o.num_experts <= 0)
    throw_error<ConfigError>(kMoeFfnRowTag, where + ": 'num_experts' must be a positive integer (the experts per FFN)");
  o.k = field("num_experts_per_tok", int64_t{2});
  if (o.k < 1 || o.k > o.num_experts)
    throw_error<ConfigError>(kMoeFfnRowTag, where + ": 'num_experts_per_tok' must be in [1, num_experts = " +
                                                std::to_string(o.num_experts) + "], got " + std::to_string(o.k));
  o.layers = field("layers", std::vector<int64_t>{});
  o.aux = field("router_aux_loss_coef", up ? 0.01 : 0.0);
  o.z = field("router_z_loss_coef", up ? 0.001 : 0.0);
  o.distillation = field("router_distillation_coef", 1.0);
  o.kmeans_iterations = field("kmeans_iterations", int64_t{20});
  o.seed = field("seed", uint64_t{0});
  o.noisy = field("noisy_gating", false);
  o.dropless = field("dropless", true);
  o.capacity_factor = field("capacity_factor", 1.25);
  o.expert_size = field("expert_size", int64_t{0});
  o.init_std = field("init_std", 0.02);
  if (o.expert_size < 0)
    throw_error<ConfigError>(kMoeFfnRowTag, where + ": 'expert_size' must be positive (0 = the dense FFN's), got " +
                                                std::to_string(o.expert_size));
  if (!(o.init_std > 0) || !std::isfinite(o.init_std))
    throw_error<ConfigError>(kMoeFfnRowTag,
                             where + ": 'init_std' must be a positive number, got " + std::to_string(o.init_std));
  o.train_experts = field("train_experts", up);  // MoEfication trains only the routers
  return o;
}

UpcycleOptions upcycle_options(const MoeConfig& c, const std::shared_ptr<RoutingContext>& ctx,
                               const std::string& name) {
  return UpcycleOptions(c.num_experts)
      .k(c.k)
      .layers(c.layers)
      .name(name)
      .noisy(c.noisy)
      .load_balance_coef(c.aux)
      .z_loss_coef(c.z)
      .dropless(c.dropless)
      .capacity_factor(c.capacity_factor)
      .context(ctx);
}

MoefyOptions moefy_options(const MoeConfig& c, const std::shared_ptr<RoutingContext>& ctx, const std::string& name) {
  return MoefyOptions(c.num_experts)
      .k(c.k)
      .layers(c.layers)
      .name(name)
      .kmeans_iterations(c.kmeans_iterations)
      .seed(c.seed)
      .router_distillation_coef(c.distillation)
      .load_balance_coef(c.aux)
      .z_loss_coef(c.z)
      .context(ctx);
}

// The MoE FFN moefy_ffn makes from `ffn`, without clustering or weights (load fills them).
MoeFfn moefy_shell(const DenseFfn& ffn, const MoefyOptions& o) {
  const int64_t E = o.num_experts(), H = ffn.features(), I = ffn.intermediate();
  if (I % E != 0)
    throw_error<ConfigError>(kMoeFfnRowTag, "intermediate size " + std::to_string(I) +
                                                " is not divisible by num_experts " + std::to_string(E));
  auto router =
      TopKRouter(TopKRouterOptions(H, E).k(o.k()).load_balance_coef(o.load_balance_coef()).z_loss_coef(o.z_loss_coef()),
                 o.context());
  return MoeFfn(MoeFfnOptions(H, I / E, E)
                    .activation(ffn.activation)
                    .gated(ffn.gated)
                    .bias(ffn.b_up.defined())
                    .shared_bias(ffn.b_down.defined())
                    .weighted(false)
                    .router_distillation_coef(o.router_distillation_coef()),
                router.ptr());
}

// The attached MoE FFN blocks of one module set. Off: the sites run their dense FFNs.
struct MoeState : AdapterState {
  struct Site {
    std::string path;
    std::shared_ptr<BlockSite> host;
    MoeFfn moe;
  };
  std::vector<Site> sites;
  std::string name;           // the attach name at every site
  bool train_experts = true;  // false: parameters() are the routers only
  std::vector<torch::Tensor> parameters() const override {
    std::vector<torch::Tensor> out;
    for (const auto& s : sites)
      for (const auto& p : train_experts ? s.moe->parameters() : s.moe->router->parameters()) out.push_back(p);
    return out;
  }
  void set_enabled(bool on) override {
    for (auto& s : sites) s.moe->enabled = on;
  }
  void set_scale(double scale) override {
    if (scale != 1.0)
      throw_error(kMoeFfnRowTag,
                  "'" + name + "' replaces the dense FFNs and has no scale (use set_enabled(false) for them)");
  }
  bool mergeable() const override { return false; }  // routing depends on the input: Adapter::merge refuses
  void remove() override {
    for (auto& s : sites) s.host->detach(name);
    sites.clear();
  }
};

// Attaches make(dense FFN) as `name` at the selected feed-forward sites (replace_ffns);
// on failure nothing stays attached.
std::shared_ptr<MoeState> attach(Backbone& m, const MoeConfig& c, const std::string& name,
                                 const std::function<MoeFfn(const DenseFfn&)>& make) {
  auto s = std::make_shared<MoeState>();
  s->name = name;
  s->train_experts = c.train_experts;
  std::map<std::string, std::shared_ptr<BlockSite>> hosts;
  std::set<std::string> had;  // sites that carried `name` before
  for (auto& [path, site] : block_sites(m)) {
    hosts[path] = site;
    if (site->module(name)) had.insert(path);
  }
  try {
    for (auto& [path, moe] : replace_ffns(m, c.layers, name, make)) s->sites.push_back({path, hosts.at(path), moe});
  } catch (...) {
    for (auto& [path, site] : hosts)
      if (!had.count(path) && site->module(name)) site->detach(name);
    throw;
  }
  if (!c.train_experts)  // the experts stay as built; the routers train
    for (auto& site : s->sites)
      for (auto& p : site.moe->named_parameters())
        if (p.key().rfind("router.", 0) != 0) p.value().set_requires_grad(false);
  return s;
}

Adapter moe_handle(const MoeConfig& c, const std::string& name, std::shared_ptr<MoeState> state,
                   std::shared_ptr<RoutingContext> ctx) {
  Adapter a;
  a.name = name;
  a.peft_type = kType;
  a.config = c.to_json();
  a.state = std::move(state);
  a.context = std::move(ctx);
  return a;
}

// The MoE blocks of `c` at every selected FFN: upcycled copies, MoE-fied clusters, or (to
// load a folder into) MoE-fied shells without clustering.
std::shared_ptr<MoeState> make_blocks(Backbone& m, const MoeConfig& c, const std::string& name,
                                      const std::shared_ptr<RoutingContext>& ctx, bool shells) {
  if (c.upcycle() || c.random()) {
    auto o = upcycle_options(c, ctx, name);
    o.validate();
    if (c.random())
      return attach(m, c, name, [&](const DenseFfn& ffn) { return random_moe_ffn(ffn, o, c.expert_size, c.init_std); });
    return attach(m, c, name, [&](const DenseFfn& ffn) { return upcycle_ffn(ffn, o); });
  }
  auto o = moefy_options(c, ctx, name);
  o.validate();
  return attach(m, c, name, [&](const DenseFfn& ffn) { return shells ? moefy_shell(ffn, o) : moefy_ffn(ffn, o); });
}

Adapter moe_build(Backbone& m, const json& config, const ModuleEnv& env) {
  const auto c = parse_config(config, "module config");
  auto ctx = context_of(env);
  return moe_handle(c, env.name, make_blocks(m, c, env.name, ctx, /*shells=*/false), ctx);
}

// Copies the folder's tensors into the blocks; every tensor must find its parameter and shape.
void copy_tensors(MoeState& s, const io::PeftFolder& folder, const std::vector<int64_t>& layers) {
  std::set<std::string> used;
  for (auto& site : s.sites)
    for (auto& p : site.moe->named_parameters()) {
      const auto key = io::kPeftPrefix + site.path + "." + p.key();
      auto it = folder.tensors.find(key);
      if (it == folder.tensors.end())
        throw_error<ConfigError>(kMoeFfnRowTag, folder.dir + ": adapter_model.safetensors has no tensor '" + key +
                                                    "' (the folder does not match this model)");
      if (it->second.sizes() != p.value().sizes())
        throw_error<ConfigError>(kMoeFfnRowTag, folder.dir + ": tensor '" + key + "' has shape " +
                                                    c10::str(it->second.sizes()) + ", this model needs " +
                                                    c10::str(p.value().sizes()));
      torch::NoGradGuard no_grad;
      p.value().copy_(it->second);
      used.insert(key);
    }
  for (const auto& [key, t] : folder.tensors)
    if (!used.count(key))
      throw_error<ConfigError>(kMoeFfnRowTag,
                               folder.dir + ": tensor '" + key + "' matches no MoE FFN site of this model (" +
                                   std::to_string(s.sites.size()) + " sites, layers " + json(layers).dump() + ")");
}

Adapter moe_load(Backbone& m, const io::PeftFolder& folder, const ModuleEnv& env) {
  const auto c = parse_config(folder.config, folder.dir + "/adapter_config.json");
  auto ctx = context_of(env);
  std::shared_ptr<MoeState> s;
  try {
    s = make_blocks(m, c, env.name, ctx, /*shells=*/true);  // the folder's tensors overwrite them below
  } catch (const std::invalid_argument& e) {
    throw_error<ConfigError>(kMoeFfnRowTag, folder.dir + ": " + e.what());
  }
  try {
    copy_tensors(*s, folder, c.layers);
  } catch (...) {
    s->remove();
    throw;
  }
  return moe_handle(c, env.name, s, ctx);
}

void moe_save(const Adapter& a, const std::string& dir) {
  auto s = std::dynamic_pointer_cast<MoeState>(a.state);
  if (!s) throw_error(kMoeFfnRowTag, "adapter '" + a.name + "' has no MoE FFN blocks to save");
  io::NamedTensors tensors;
  for (const auto& site : s->sites)
    for (const auto& p : site.moe->named_parameters())
      tensors.emplace_back(io::kPeftPrefix + site.path + "." + p.key(), p.value().detach().cpu().contiguous());
  json config = a.config;
  config["peft_type"] = kType;
  config["inference_mode"] = true;
  io::write_peft_folder(dir, config, tensors);
}

}  // namespace

ModuleType moe_ffn_row() {
  ModuleType t;
  t.peft_type = kType;
  t.summary = "MoE feed-forward blocks from the dense FFNs: MoEfication (k-means experts) or sparse upcycling";
  t.build = moe_build;
  t.load = moe_load;
  t.save = moe_save;
  return t;
}

}  // namespace modula
