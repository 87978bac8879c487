// The one typed reader of JSON config keys (adapter_config.json, config.json, recipes).
// The caller says how a wrong type is reported: its component, file and exception type.
//
//   int64_t r = io::config_field<int64_t>(config, "r", 8, "[adapter]");
#pragma once

#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>

namespace modula::io {

// config[key] as T, `fallback` when absent or null; a value of the wrong type calls
// wrong_type(key, value), which throws (the caller's component, file and exception type).
template <typename T, typename OnWrongType>
T config_field_with(const nlohmann::json& config, const char* key, T fallback, OnWrongType&& wrong_type) {
  if (!config.contains(key) || config[key].is_null()) return fallback;
  try {
    return config[key].get<T>();
  } catch (const nlohmann::json::exception&) {
    wrong_type(key, config[key]);
    throw;
  }
}

// config[key] as T, `fallback` when absent or null. Throws std::invalid_argument
// "<tag> config key '<key>' has the wrong type (<json type>)".
template <typename T>
T config_field(const nlohmann::json& config, const char* key, T fallback, const std::string& tag) {
  return config_field_with(config, key, std::move(fallback), [&](const char* k, const nlohmann::json& v) {
    throw std::invalid_argument(tag + " config key '" + k + "' has the wrong type (" + v.type_name() + ")");
  });
}

// config[key] as T in `file`'s config, `fallback` when absent or null. A value of the wrong
// type throws E "[tag] <file>: key '<key>' has the wrong type (<json type>)" (E defaults to
// std::runtime_error: a wrong type in a saved file is a corrupt file).
template <typename T, typename E = std::runtime_error>
T file_config_field(const nlohmann::json& config, const std::string& file, const char* key, T fallback,
                    std::string_view tag) {
  return config_field_with(config, key, std::move(fallback), [&](const char* k, const nlohmann::json& v) {
    throw E("[" + std::string(tag) + "] " + file + ": key '" + k + "' has the wrong type (" + v.type_name() + ")");
  });
}

}  // namespace modula::io
