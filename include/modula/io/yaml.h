// YAML documents as JSON values, so that configs, merge recipes and composition specs
// have one parser (nlohmann::json) after reading. Scalars are typed by the YAML 1.2 core
// schema: null (~, null, empty), true/false, ints (decimal, 0x hex), floats (incl. .inf),
// everything else a string; quoted scalars always stay strings.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

namespace modula::io {

// Throws std::invalid_argument "[yaml] <source>: invalid YAML at line L, column C: <why>".
nlohmann::json yaml_to_json(const std::string& text, const std::string& source = "<yaml>");

}  // namespace modula::io
