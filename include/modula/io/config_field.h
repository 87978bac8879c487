// The one typed reader of JSON config keys (adapter_config.json, config.json, recipes).
// The caller says how a wrong type is reported: its component, file and exception type.
// Integer fields take integers only: 64.7 or 4.5 is a wrong type, never truncated.
//
//   int64_t r = io::config_field<int64_t>(config, "r", 8, "[adapter]");
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

namespace modula::io {

// What a config field of type T must hold, for error messages ("an integer", "a list of strings").
template <typename T>
std::string config_expected_type() {
  if constexpr (std::is_same_v<T, bool>)
    return "a boolean";
  else if constexpr (std::is_integral_v<T>)
    return "an integer";
  else if constexpr (std::is_floating_point_v<T>)
    return "a number";
  else if constexpr (std::is_same_v<T, std::string>)
    return "a string";
  else if constexpr (std::is_same_v<T, std::vector<std::string>>)
    return "a list of strings";
  else if constexpr (std::is_same_v<T, std::vector<int64_t>>)
    return "a list of integers";
  else
    return "another type";
}

// "<json type> <value>, expected <what T is>", the value shortened to 60 characters.
template <typename T>
std::string config_type_mismatch(const nlohmann::json& value) {
  std::string shown = value.dump();
  if (shown.size() > 60) shown = shown.substr(0, 57) + "...";
  return std::string(value.type_name()) + " " + shown + ", expected " + config_expected_type<T>();
}

// Whether `value` converts to T without loss: an integer field refuses 4.5, 1e300 and
// anything outside T's range (nlohmann would truncate or overflow silently).
template <typename T>
bool config_value_fits(const nlohmann::json& value) {
  if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool>) {
    using limits = std::numeric_limits<T>;
    if (value.is_number_float()) {
      const double d = value.get<double>();
      // limits::max() + 1 is a power of two, exact in double.
      return std::isfinite(d) && d == std::trunc(d) && d >= static_cast<double>(limits::min()) &&
             d < static_cast<double>(limits::max()) + 1.0;
    }
    if (value.is_number_unsigned()) return value.get<uint64_t>() <= static_cast<uint64_t>(limits::max());
    if (value.is_number_integer()) {
      const int64_t v = value.get<int64_t>();
      if constexpr (std::is_signed_v<T>) return v >= limits::min() && v <= limits::max();
      return v >= 0 && static_cast<uint64_t>(v) <= static_cast<uint64_t>(limits::max());
    }
  }
  if constexpr (std::is_same_v<T, std::vector<int64_t>>) {
    if (!value.is_array()) return true;  // get<> reports the type
    for (const auto& e : value)
      if (!e.is_number_integer() || !config_value_fits<int64_t>(e)) return false;
  }
  return true;
}

// config[key] as T, `fallback` when absent or null; a value of the wrong type calls
// wrong_type(key, value, description) with description = config_type_mismatch<T>(value),
// which throws (the caller's component, file and exception type).
template <typename T, typename OnWrongType>
T config_field_with(const nlohmann::json& config, const char* key, T fallback, OnWrongType&& wrong_type) {
  if (!config.contains(key) || config[key].is_null()) return fallback;
  const nlohmann::json& value = config[key];
  if (!config_value_fits<T>(value)) {
    wrong_type(key, value, config_type_mismatch<T>(value));
    throw std::invalid_argument(std::string("config key '") + key + "': " + config_type_mismatch<T>(value));
  }
  try {
    return value.get<T>();
  } catch (const nlohmann::json::exception&) {
    wrong_type(key, value, config_type_mismatch<T>(value));
    throw;
  }
}

// config[key] as T, `fallback` when absent or null. Throws std::invalid_argument
// "<tag> config key '<key>' has the wrong type: <json type> <value>, expected <type>".
template <typename T>
T config_field(const nlohmann::json& config, const char* key, T fallback, const std::string& tag) {
  return config_field_with(config, key, std::move(fallback),
                           [&](const char* k, const nlohmann::json&, const std::string& what) {
                             throw std::invalid_argument(tag + " config key '" + k + "' has the wrong type: " + what);
                           });
}

// config[key] as T in `file`'s config, `fallback` when absent or null. A value of the wrong
// type throws E "[tag] <file>: key '<key>' has the wrong type: <json type> <value>, expected
// <type>" (E defaults to std::runtime_error: a wrong type in a saved file is a corrupt file).
template <typename T, typename E = std::runtime_error>
T file_config_field(const nlohmann::json& config, const std::string& file, const char* key, T fallback,
                    std::string_view tag) {
  return config_field_with(
      config, key, std::move(fallback), [&](const char* k, const nlohmann::json&, const std::string& what) {
        throw E("[" + std::string(tag) + "] " + file + ": key '" + k + "' has the wrong type: " + what);
      });
}

}  // namespace modula::io
