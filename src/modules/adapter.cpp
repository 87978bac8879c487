// The module-set handle, and the PEFT-layout types of the modules library: build modules
// from a config, move tensors between PEFT keys and module parameters. The registry
// (composition/registry.cpp) dispatches by peft_type.
#include "modula/modules/adapter.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <set>

#include "modula/io/peft.h"
#include "modula/modules/bottleneck.h"
#include "modula/modules/ia3.h"
#include "modula/modules/lora.h"
#include "modula/modules/targets.h"
#include "modula/util/error.h"

namespace modula {
namespace {

using json = nlohmann::json;

constexpr std::string_view kAdapterTag = "adapter";

template <typename T>
T field(const json& c, const char* key, T fallback) {
  return io::config_field<T>(c, key, fallback, "[adapter]");
}

void build_lora(Backbone& model, Adapter& a) {
  const auto& c = a.config;
  if (field<std::string>(c, "bias", "none") != "none")
    throw_error(kAdapterTag, "LoRA bias '" + c["bias"].get<std::string>() + "' is not supported (use \"none\")");
  auto init = c.value("init_lora_weights", json(true));
  if (!(init.is_boolean() || init == "gaussian"))
    throw_error(kAdapterTag, "init_lora_weights " + init.dump() + " is not supported (true, false, \"gaussian\")");
  json ranks = c.value("rank_pattern", json::object()), alphas = c.value("alpha_pattern", json::object());
  // rank_pattern / alpha_pattern entry for `path` as T (the key named in errors), else `fallback`.
  auto per_site = [&](const char* key, const json& patterns, const std::string& path, auto fallback) {
    using T = decltype(fallback);
    const json* value = nullptr;
    try {
      value = pattern_value(patterns, path);
    } catch (const std::invalid_argument& e) {
      throw_error(kAdapterTag, std::string(key) + ": " + e.what());
    }
    return value ? field<T>(json{{key, *value}}, key, fallback) : fallback;
  };
  for (auto& [path, layer] : select_sites(model, c)) {
    auto o = LoraOptions(layer->options.in_features(), layer->options.out_features())
                 .r(per_site("rank_pattern", ranks, path, field<int64_t>(c, "r", 8)))
                 .alpha(per_site("alpha_pattern", alphas, path, field<double>(c, "lora_alpha", 8.0)))
                 .dropout(field<double>(c, "lora_dropout", 0.0))
                 .use_rslora(field<bool>(c, "use_rslora", false))
                 .use_dora(field<bool>(c, "use_dora", false));
    auto lora = std::make_shared<LoraImpl>(o);
    torch::NoGradGuard no_grad;
    if (init == false) lora->lora_B.normal_(0, 0.02);  // non-identity start, as PEFT's init_lora_weights=False
    if (init == "gaussian") lora->lora_A.normal_(0, 1.0 / static_cast<double>(o.r()));
    lora->to(layer->weight.device(), layer->weight.scalar_type());
    if (o.use_dora()) lora->init_dora_magnitude(*layer);
    std::map<std::string, std::string> keys = {{"lora_A", "lora_A.weight"}, {"lora_B", "lora_B.weight"}};
    if (o.use_dora()) keys["lora_magnitude_vector"] = "lora_magnitude_vector";
    a.modules.push_back({path, layer, lora, keys});
  }
}

void build_ia3(Backbone& model, Adapter& a) {
  json ff = a.config.value("feedforward_modules", json::array());
  for (auto& [path, layer] : select_sites(model, a.config)) {
    bool feedforward = !ff.is_null() && matches_target(ff, path);
    auto ia3 = std::make_shared<Ia3Impl>(
        Ia3Options(layer->options.in_features(), layer->options.out_features()).feedforward(feedforward));
    ia3->to(layer->weight.device(), layer->weight.scalar_type());
    a.modules.push_back({path, layer, ia3, {{"ia3_l", "ia3_l"}}});
  }
}

void build_prompt(Backbone& model, Adapter& a) {
  const auto& c = a.config;
  std::string init = field<std::string>(c, "prompt_tuning_init", "RANDOM");
  auto o = PromptTuningOptions(field<int64_t>(c, "num_virtual_tokens", 0),
                               field<int64_t>(c, "token_dim", model.config().hidden_size));
  if (init == "RANDOM")
    o.init("random");
  else if (init == "SAMPLE_VOCAB")
    o.init("vocab");
  else if (init == "TEXT")
    o.init("text").init_token_ids(field<std::vector<int64_t>>(c, "init_token_ids", {}));
  else
    throw_error(kAdapterTag, "prompt_tuning_init '" + init + "' is not supported (RANDOM, SAMPLE_VOCAB, TEXT)");
  if (field<int64_t>(c, "num_transformer_submodules", 1) != 1)
    throw_error(kAdapterTag, "prompt tuning for encoder-decoder models is not supported");
  a.input = std::make_shared<PromptTuningImpl>(o, model);
}

void build_prefix(Backbone& model, Adapter& a) {
  const auto& c = a.config;
  const auto& mc = model.config();
  int64_t heads = field<int64_t>(c, "num_attention_heads", mc.num_key_value_heads);
  int64_t token_dim = field<int64_t>(c, "token_dim", mc.num_key_value_heads * mc.head_dim);
  if (heads <= 0 || token_dim % heads != 0)
    throw_error(kAdapterTag, "prefix token_dim must be a multiple of num_attention_heads");
  auto o = PrefixTuningOptions(field<int64_t>(c, "num_virtual_tokens", 0),
                               field<int64_t>(c, "num_layers", mc.num_hidden_layers), heads, token_dim / heads)
               .projection(field<bool>(c, "prefix_projection", false))
               .encoder_hidden(field<int64_t>(c, "encoder_hidden_size", 0));
  auto prefix = std::make_shared<PrefixTuningImpl>(o);
  prefix->to(model.parameters().front().device());
  a.input = prefix;
}

// The config's target_modules, or else the block sites of the preset's roles by path.
json bottleneck_targets(Backbone& model, const json& c, const BottleneckPreset& preset) {
  json targets = c;
  if (c.contains("target_modules") && !c["target_modules"].is_null()) return targets;
  targets["target_modules"] = json::array();
  for (auto& [path, site] : block_sites(model))
    if (std::find(preset.blocks.begin(), preset.blocks.end(), site->role) != preset.blocks.end())
      targets["target_modules"].push_back(path);
  return targets;
}

// Bottleneck adapters (Houlsby et al. 2019; Pfeiffer et al. 2021; He et al. 2022) on block sites.
void build_bottleneck(Backbone& model, Adapter& a) {
  const auto& c = a.config;
  if (!c.contains("config"))
    throw_error(kAdapterTag, "MODULA_BOTTLENECK needs \"config\": \"pfeiffer\", \"houlsby\" or \"parallel\"");
  const auto& preset = bottleneck_preset(field<std::string>(c, "config", ""));
  const auto& d = preset.defaults;
  for (auto& [path, site] : select_block_sites(model, bottleneck_targets(model, c, preset))) {
    auto o = BottleneckOptions(site->features)
                 .reduction_factor(field<double>(c, "reduction_factor", d.reduction_factor()))
                 .non_linearity(field<std::string>(c, "non_linearity", d.non_linearity()))
                 .residual(field<bool>(c, "residual", d.residual()))
                 .ln_before(field<bool>(c, "ln_before", d.ln_before()))
                 .scaling(field<double>(c, "scaling", d.scaling()))
                 .mode(d.mode());
    auto module = std::make_shared<BottleneckImpl>(o);
    auto p = site->parameters().front();
    module->to(p.device(), p.scalar_type());
    std::map<std::string, std::string> keys;
    for (const auto& param : module->named_parameters()) keys[param.key()] = param.key();
    a.modules.push_back({path, nullptr, module, keys, site});
  }
}

Adapter build_with(void (*build)(Backbone&, Adapter&), const char* type, Backbone& model, const json& config,
                   const std::string& name) {
  Adapter a;
  a.name = name;
  a.config = config;
  a.peft_type = type;
  build(model, a);
  attach_modules(a);
  return a;
}

// "base_model.model.<site>.<suffix>" for a module parameter.
std::string peft_key(const AttachedModule& m, const std::string& param) {
  auto it = m.peft_keys.find(param);
  if (it == m.peft_keys.end())
    throw_error(kAdapterTag, "module parameter '" + param + "' at " + m.site + " has no PEFT key");
  return io::kPeftPrefix + m.site + "." + it->second;
}

}  // namespace

Adapter lora_adapter(Backbone& model, const json& c, const std::string& name) {
  return build_with(build_lora, "LORA", model, c, name);
}
Adapter ia3_adapter(Backbone& model, const json& c, const std::string& name) {
  return build_with(build_ia3, "IA3", model, c, name);
}
Adapter prompt_adapter(Backbone& model, const json& c, const std::string& name) {
  return build_with(build_prompt, "PROMPT_TUNING", model, c, name);
}
Adapter prefix_adapter(Backbone& model, const json& c, const std::string& name) {
  return build_with(build_prefix, "PREFIX_TUNING", model, c, name);
}
Adapter bottleneck_adapter(Backbone& model, const json& c, const std::string& name) {
  return build_with(build_bottleneck, "MODULA_BOTTLENECK", model, c, name);
}

void attach_modules(Adapter& a) {
  for (auto& m : a.modules) {
    if (!m.host) m.host = m.layer;
    m.host->attach(m.attached_as.empty() ? a.name : m.attached_as, m.module);  // follows the backbone's train/eval mode
  }
}

std::vector<torch::Tensor> Adapter::parameters() const {
  std::vector<torch::Tensor> out;
  for (const auto& m : modules)
    for (const auto& p : m.module->parameters()) out.push_back(p);
  if (input)
    for (const auto& p : input->parameters()) out.push_back(p);
  if (state)
    for (const auto& p : state->parameters()) out.push_back(p);
  return out;
}

int64_t Adapter::num_trainable() const {
  int64_t n = 0;
  for (const auto& p : parameters()) n += p.numel();
  return n;
}

bool Adapter::mergeable() const {
  if (input || (state && !state->mergeable())) return false;
  for (const auto& m : modules)
    if (!m.module->mergeable() || !m.layer) return false;
  return true;
}

void Adapter::merge() {
  if (input) throw_error(kAdapterTag, "input modules (" + peft_type + ") cannot be merged into weights");
  for (auto& m : modules)
    if (!m.module->mergeable() || !m.layer)
      throw_error(kAdapterTag, peft_type + " modules are non-linear or routed (site " + m.site +
                                   ") and cannot be merged into weights");
  if (state && !state->mergeable()) throw_error(kAdapterTag, peft_type + " modules cannot be merged into weights");
  for (auto& m : modules) m.module->merge(*m.layer);
  if (state) state->merge();
}

void Adapter::unmerge() {
  for (auto& m : modules)
    if (m.layer) m.module->unmerge(*m.layer);  // block-site modules are never merged
  if (state) state->unmerge();
}

void Adapter::set_enabled(bool on) {
  for (auto& m : modules) m.module->enabled = on;
  if (state) state->set_enabled(on);
}

void Adapter::set_scale(double s) {
  if (!std::isfinite(s)) throw_error(kAdapterTag, "scale must be finite");
  if (input && s != 1.0) throw_error(kAdapterTag, peft_type + " adapters have no scale (input composition)");
  for (auto& m : modules) {
    if (m.module->merged) throw_error(kAdapterTag, "unmerge before changing the scale");
    m.module->scale = s;
  }
  if (state) state->set_scale(s);
}

void Adapter::remove() {
  for (auto& m : modules) {
    if (m.module->merged) m.module->unmerge(*m.layer);
    m.host->detach(m.attached_as.empty() ? name : m.attached_as);
  }
  if (state) state->remove();
  modules.clear();
  input = nullptr;
  state = nullptr;
}

void load_peft_tensors(Adapter& a, const std::string& dir, const std::map<std::string, torch::Tensor>& tensors) {
  std::set<std::string> used;
  auto copy = [&](const std::string& key, torch::Tensor dst) {
    auto it = tensors.find(key);
    if (it == tensors.end()) throw_error(kAdapterTag, dir + ": adapter_model.safetensors has no tensor '" + key + "'");
    if (it->second.sizes() != dst.sizes())
      throw_error(kAdapterTag, dir + ": tensor '" + key + "' has shape " + c10::str(it->second.sizes()) +
                                   ", expected " + c10::str(dst.sizes()));
    torch::NoGradGuard no_grad;
    dst.copy_(it->second);
    used.insert(key);
  };
  try {
    for (auto& m : a.modules)
      for (auto& p : m.module->named_parameters()) copy(peft_key(m, p.key()), p.value());
    if (auto prefix = std::dynamic_pointer_cast<PrefixTuningImpl>(a.input)) {
      auto it = tensors.find("prompt_embeddings");
      if (it == tensors.end())
        throw_error(kAdapterTag, dir + ": adapter_model.safetensors has no tensor 'prompt_embeddings'");
      prefix->set_prompt_embeddings(it->second.to(torch::kFloat32));
      used.insert("prompt_embeddings");
    } else if (auto prompt = std::dynamic_pointer_cast<PromptTuningImpl>(a.input)) {
      copy("prompt_embeddings", prompt->embedding);
    }
    for (const auto& [key, t] : tensors)
      if (!used.count(key))
        throw_error(kAdapterTag, dir + ": tensor '" + key + "' matches no module of this " + a.peft_type +
                                     " config (target_modules " + a.config.value("target_modules", json()).dump() +
                                     ")");
  } catch (...) {
    a.remove();
    throw;
  }
}

void save_peft_folder(const Adapter& a, const std::string& dir) {
  io::NamedTensors tensors;
  for (const auto& m : a.modules)
    for (const auto& p : m.module->named_parameters())
      tensors.emplace_back(peft_key(m, p.key()), p.value().detach().cpu().contiguous());
  if (a.input) tensors.emplace_back("prompt_embeddings", a.input->prompt_embeddings().detach().cpu().contiguous());
  json config = a.config;
  config["peft_type"] = a.peft_type;
  config["inference_mode"] = true;
  // PEFT writes every field; AutoPeftModel* reads these three (null: unknown, as PEFT's defaults).
  for (const char* k : {"base_model_name_or_path", "revision", "task_type"})
    if (!config.contains(k)) config[k] = nullptr;
  io::write_peft_folder(dir, config, tensors);
}

void remove_adapter(Adapter& a) { a.remove(); }

void freeze_backbone(Backbone& model) {
  for (auto& p : model.named_parameters())
    if (p.key().find(".adapters.") == std::string::npos) p.value().set_requires_grad(false);
}

BackboneOutput forward_adapted(Backbone& model, const Adapter& adapter, BackboneInput in) {
  if (!adapter.input) return model.forward(in);
  return forward_with(model, {adapter.input}, std::move(in));
}

}  // namespace modula
