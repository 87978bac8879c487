// YAML -> JSON, so the config has one parser (nlohmann::json) after reading.
#include "modula/train/config.h"

#include <yaml-cpp/yaml.h>

#include <cmath>
#include <regex>

namespace modula::train {
namespace {

using json = nlohmann::json;

// YAML 1.2 core schema for plain scalars; quoted scalars stay strings.
json scalar(const YAML::Node& n) {
  const std::string& s = n.Scalar();
  if (n.Tag() == "!") return s;  // quoted
  static const std::regex null_re("~|null|Null|NULL|");
  static const std::regex true_re("true|True|TRUE"), false_re("false|False|FALSE");
  static const std::regex int_re("[-+]?[0-9]+"), hex_re("0x[0-9a-fA-F]+");
  static const std::regex float_re(R"([-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?)");
  if (std::regex_match(s, null_re)) return nullptr;
  if (std::regex_match(s, true_re)) return true;
  if (std::regex_match(s, false_re)) return false;
  try {
    if (std::regex_match(s, int_re)) return std::stoll(s);
    if (std::regex_match(s, hex_re)) return std::stoll(s, nullptr, 16);
  } catch (const std::out_of_range&) {
    return std::stod(s);
  }
  if (std::regex_match(s, float_re)) return std::stod(s);
  if (s == ".inf" || s == "+.inf") return INFINITY;
  if (s == "-.inf") return -INFINITY;
  return s;
}

json convert(const YAML::Node& n) {
  switch (n.Type()) {
    case YAML::NodeType::Null:
    case YAML::NodeType::Undefined: return nullptr;
    case YAML::NodeType::Scalar: return scalar(n);
    case YAML::NodeType::Sequence: {
      json a = json::array();
      for (const auto& item : n) a.push_back(convert(item));
      return a;
    }
    case YAML::NodeType::Map: {
      json o = json::object();
      for (const auto& kv : n) o[kv.first.as<std::string>()] = convert(kv.second);
      return o;
    }
  }
  return nullptr;
}

}  // namespace

json yaml_to_json(const std::string& text, const std::string& source) {
  try {
    return convert(YAML::Load(text));
  } catch (const YAML::Exception& e) {
    throw ConfigError("[train] " + source + ": invalid YAML at line " + std::to_string(e.mark.line + 1) + ": " + e.msg);
  }
}

}  // namespace modula::train
