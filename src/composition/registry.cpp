// The module registry: the one table of module types (registry.h). Each row says how its
// type is built from a config, loaded from a folder and saved; the PEFT-layout rows share
// one loader (config -> modules, then tensors by PEFT key).
#include "modula/composition/registry.h"

#include <stdexcept>

#include "composition/module_rows.h"
#include "modula/composition/poly_lora.h"
#include "modula/io/peft.h"
#include "modula/util/error.h"

namespace modula {
namespace {

using json = nlohmann::json;
using Build = std::function<Adapter(Backbone&, const json&, const ModuleEnv&)>;

constexpr std::string_view kRegistryTag = "registry";

// A row whose folder is PEFT's layout: build from the folder's config, copy the tensors.
ModuleType peft_row(const std::string& type, const std::string& summary, Build build) {
  ModuleType t;
  t.peft_type = type;
  t.summary = summary;
  t.build = build;
  t.load = [build](Backbone& m, const io::PeftFolder& folder, const ModuleEnv& env) {
    auto a = build(m, folder.config, env);
    load_peft_tensors(a, folder.dir, folder.tensors);
    return a;
  };
  t.save = save_peft_folder;
  return t;
}

// Builders that need only the attach name.
Build named(Adapter (*build)(Backbone&, const json&, const std::string&)) {
  return [build](Backbone& m, const json& c, const ModuleEnv& env) { return build(m, c, env.name); };
}

// Polytropon routes by the ids of the env's RoutingContext under its routing_key ("task").
Adapter poly_build(Backbone& m, const json& c, const ModuleEnv& env) {
  auto ctx = context_of(env);
  auto a = add_poly_adapter(m, c, ctx, env.name);
  a.context = ctx;
  return a;
}

std::vector<ModuleType> make_table() {
  std::vector<ModuleType> rows = {
      peft_row("LORA", "low-rank updates s·B·A (rsLoRA, DoRA, rank/alpha patterns)", named(lora_adapter)),
      peft_row("IA3", "(IA)³ rescaling vectors", named(ia3_adapter)),
      peft_row("PROMPT_TUNING", "virtual token embeddings prepended to the input", named(prompt_adapter)),
      peft_row("PREFIX_TUNING", "per-layer key/value prefixes", named(prefix_adapter)),
      peft_row("POLY", "Polytropon / MHR: LoRA skills with learned task-to-skill routing", poly_build),
      peft_row("MODULA_BOTTLENECK", "bottleneck adapters on block sites (pfeiffer, houlsby, parallel)",
               named(bottleneck_adapter)),
      sparse_ft_row(),
      bitfit_row(),
      hyper_lora_row(),
      fusion_row(),
      peft_row("MODULA_MOE_LORA", "mixture of LoRA experts per site, token-level top-k router (MoLoRA)",
               moe_lora_build),
      moe_ffn_row(),
      composition_row(),
  };
  return rows;
}

std::pair<std::string, double> folder_and_scale(const std::string& spec) {
  auto colon = spec.rfind(':');
  if (colon == std::string::npos) return {spec, 1.0};
  try {
    size_t used = 0;
    double scale = std::stod(spec.substr(colon + 1), &used);
    if (used != spec.size() - colon - 1) throw std::invalid_argument("trailing characters");
    return {spec.substr(0, colon), scale};
  } catch (const std::exception&) {
    throw_error("modules", "adapter spec " + spec + ": scale after ':' must be a number");
  }
}

}  // namespace

const std::vector<ModuleType>& module_types() {
  static const std::vector<ModuleType> table = make_table();
  return table;
}

std::vector<std::string> supported_peft_types() {
  std::vector<std::string> names;
  for (const auto& t : module_types()) names.push_back(t.peft_type);
  return names;
}

const ModuleType& module_type(const std::string& peft_type) {
  for (const auto& t : module_types())
    if (t.peft_type == peft_type) return t;
  std::string known;
  for (const auto& n : supported_peft_types()) known += (known.empty() ? "" : ", ") + n;
  throw_error(kRegistryTag, "unknown peft_type '" + peft_type + "' (supported: " + known + ")");
}

Adapter build_module(Backbone& model, const json& config, const ModuleEnv& env) {
  if (!config.is_object())
    throw_error(kRegistryTag, "a module config must be a JSON object (got " + config.dump() + ")");
  auto type = io::config_field<std::string>(config, "peft_type", "", "[registry]");
  auto a = module_type(type).build(model, config, env);
  a.peft_type = type;
  if (env.scale != 1.0) a.set_scale(env.scale);
  return a;
}

Adapter load_module(Backbone& model, const std::string& dir, const ModuleEnv& env) {
  auto folder = io::read_peft_folder(dir);
  const auto type = folder.peft_type;
  auto a = module_type(type).load(model, folder, env);
  a.peft_type = type;
  if (env.scale != 1.0) a.set_scale(env.scale);
  return a;
}

void save_module(const Adapter& adapter, const std::string& dir) { module_type(adapter.peft_type).save(adapter, dir); }

Adapter add_adapter(Backbone& model, const json& config, const std::string& name) {
  ModuleEnv env;
  env.name = name;
  return build_module(model, config, env);
}

Adapter load_adapter(Backbone& model, const std::string& dir, const std::string& name) {
  ModuleEnv env;
  env.name = name;
  return load_module(model, dir, env);
}

void save_adapter(const Adapter& adapter, const std::string& dir) { save_module(adapter, dir); }

std::vector<Adapter> load_module_folders(Backbone& model, const std::vector<std::string>& specs, int64_t task,
                                         std::shared_ptr<RoutingContext> context) {
  std::vector<Adapter> out;
  try {
    for (const auto& spec : specs) {
      auto [dir, scale] = folder_and_scale(spec);
      ModuleEnv env;
      env.name = "a" + std::to_string(out.size());
      env.scale = scale;
      env.task = task;
      env.context = context;
      out.push_back(load_module(model, dir, env));
    }
  } catch (...) {
    for (auto& a : out) a.remove();
    throw;
  }
  return out;
}

}  // namespace modula
