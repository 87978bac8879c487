// Which sites a module attaches to, with PEFT's target_modules rules:
//   a string is a regex that must match the whole site path;
//   a list matches a site whose path equals an entry or ends with "." + entry;
//   "all-linear" matches every linear site but the output head.
// layers_to_transform restricts to the given layer indices.
// The same rules pick block sites ("model.layers.0.mlp", "bert.encoder.layer.0.output").
#pragma once

#include <nlohmann/json.hpp>

#include "modula/backbone/backbone.h"
#include "modula/backbone/layers.h"

namespace modula {

// Every Linear site by HF path, in module order.
std::vector<std::pair<std::string, std::shared_ptr<LinearImpl>>> linear_sites(Backbone& model);

bool matches_target(const nlohmann::json& target_modules, const std::string& path);

// The sites a PEFT-style config selects (target_modules, exclude_modules,
// layers_to_transform). Throws std::invalid_argument listing a few site names when
// nothing matches.
std::vector<std::pair<std::string, std::shared_ptr<LinearImpl>>> select_sites(Backbone& model,
                                                                              const nlohmann::json& config);

// Every block site (attention / feed-forward sub-layer) by HF path, in module order.
std::vector<std::pair<std::string, std::shared_ptr<BlockSite>>> block_sites(Backbone& model);

// The block sites a config selects, by the rules of select_sites.
std::vector<std::pair<std::string, std::shared_ptr<BlockSite>>> select_block_sites(Backbone& model,
                                                                                   const nlohmann::json& config);

// PEFT rank_pattern / alpha_pattern lookup: the first key k with path matching
// "(^|.*\.)k$"; nullptr if none.
const nlohmann::json* pattern_value(const nlohmann::json& patterns, const std::string& path);

}  // namespace modula
