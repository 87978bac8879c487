// Internal: the `metadata` list of a train config (config_routing.cpp; check_routing is in
// modula/train/config.h).
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "modula/train/config.h"

namespace modula::train::detail {

// `metadata`: a list of {field: NAME, values: [...]} (or NAME alone); values as strings.
// Throws ConfigError naming `source` and the key ("metadata[1].field").
std::vector<MetadataField> parse_metadata(const nlohmann::json& v, const std::string& source);

}  // namespace modula::train::detail
