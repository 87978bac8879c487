#include "modula/modules/targets.h"

#include <algorithm>
#include <regex>

#include "modula/util/error.h"
#include "modula/util/strings.h"
#include "modules/target_regex.h"

namespace modula {
namespace {

bool is_output_head(const std::string& path) {
  return path == "lm_head" || ends_with(path, ".decoder") || path == "classifier" || ends_with(path, "out_proj") ||
         path == "score";
}

// The layer index in paths like "model.layers.3.mlp" / "transformer.h.3.attn" / "encoder.layer.3.x".
int64_t layer_index(const std::string& path) {
  static const std::regex re(R"((?:^|\.)(?:layers|h|layer)\.(\d+)(?:\.|$))");
  std::smatch m;
  return std::regex_search(path, m, re) ? std::stoll(m[1]) : -1;
}

// The user's pattern, bounded (target_regex.h), or "[targets] <what>: invalid regular expression '<pattern>' (...)".
TargetRegex target_regex(const std::string& pattern, const std::string& what) { return TargetRegex(pattern, what); }

// target_modules / exclude_modules: a string (a regex, or "all-linear") or a list of strings.
void check_target_key(const nlohmann::json& config, const char* key) {
  if (!config.contains(key) || config[key].is_null()) return;
  const auto& target = config[key];
  if (target.is_string()) {
    if (target != "all-linear") target_regex(target.get<std::string>(), key);
    return;
  }
  bool strings = target.is_array();
  if (strings)
    for (const auto& entry : target) strings = strings && entry.is_string();
  if (!strings)
    throw_error("targets", std::string(key) + " must be a string or a list of strings (got " + target.dump() + ")");
}

template <typename Site>
using Sites = std::vector<std::pair<std::string, std::shared_ptr<Site>>>;

template <typename Site>
Sites<Site> sites_of(Backbone& model) {
  Sites<Site> sites;
  for (const auto& item : model.named_modules("", /*include_self=*/false))
    if (auto site = std::dynamic_pointer_cast<Site>(item.value())) sites.emplace_back(item.key(), site);
  return sites;
}

std::vector<int64_t> layers_to_transform(const nlohmann::json& config) {
  if (!config.contains("layers_to_transform") || config["layers_to_transform"].is_null()) return {};
  const auto& l = config["layers_to_transform"];
  return l.is_array() ? l.get<std::vector<int64_t>>() : std::vector<int64_t>{l.get<int64_t>()};
}

// PEFT's selection over `all`; `kind` names the sites in the error message.
template <typename Site>
Sites<Site> select(const Sites<Site>& all, const nlohmann::json& config, const std::string& kind) {
  if (!config.contains("target_modules") || config["target_modules"].is_null())
    throw_error("targets", "config has no target_modules");
  check_target_key(config, "target_modules");
  check_target_key(config, "exclude_modules");
  const auto& target = config["target_modules"];
  const nlohmann::json exclude = config.value("exclude_modules", nlohmann::json());
  const auto layers = layers_to_transform(config);
  Sites<Site> chosen;
  for (auto& site : all) {
    if (!matches_target(target, site.first)) continue;
    if (!exclude.is_null() && matches_target(exclude, site.first)) continue;
    if (!layers.empty() && std::find(layers.begin(), layers.end(), layer_index(site.first)) == layers.end()) continue;
    chosen.push_back(site);
  }
  if (chosen.empty()) {
    std::string names;
    for (size_t i = 0; i < all.size() && i < 6; ++i) names += (i ? ", " : "") + all[i].first;
    throw_error("targets",
                "target_modules " + target.dump() + " match no " + kind + " site (sites look like: " + names + ")");
  }
  return chosen;
}

}  // namespace

std::vector<std::pair<std::string, std::shared_ptr<LinearImpl>>> linear_sites(Backbone& model) {
  return sites_of<LinearImpl>(model);
}

std::vector<std::pair<std::string, std::shared_ptr<BlockSite>>> block_sites(Backbone& model) {
  return sites_of<BlockSite>(model);
}

bool matches_target(const nlohmann::json& target, const std::string& path) {
  if (target.is_string()) {
    const auto t = target.get<std::string>();
    if (t == "all-linear") return !is_output_head(path);
    return target_regex(t, "target_modules").full_match(path);
  }
  if (!target.is_array()) throw_error("targets", "target_modules must be a string or a list");
  for (const auto& entry : target) {
    if (!entry.is_string())
      throw_error("targets", "target_modules must be a string or a list of strings (got " + target.dump() + ")");
    const auto t = entry.get<std::string>();
    if (path == t || ends_with(path, "." + t)) return true;
  }
  return false;
}

std::vector<std::pair<std::string, std::shared_ptr<LinearImpl>>> select_sites(Backbone& model,
                                                                              const nlohmann::json& config) {
  return select(linear_sites(model), config, "linear");
}

std::vector<std::pair<std::string, std::shared_ptr<BlockSite>>> select_block_sites(Backbone& model,
                                                                                   const nlohmann::json& config) {
  return select(block_sites(model), config, "block");
}

const nlohmann::json* pattern_value(const nlohmann::json& patterns, const std::string& path) {
  if (!patterns.is_object()) return nullptr;
  for (auto it = patterns.begin(); it != patterns.end(); ++it)
    if (target_regex("(^|.*\\.)" + it.key() + "$", "pattern '" + it.key() + "'").full_match(path)) return &it.value();
  return nullptr;
}

}  // namespace modula
