// Error helpers for the tokenizer implementation. Component factories throw
// ConfigError naming the offending JSON key; from_file() rewraps it as a
// TokenizerError that also names the file.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "modula/text/tokenizer.h"
#include "modula/util/error.h"
#include "text/unicode.h"

namespace modula::text {

using json = nlohmann::json;

// A tokenizer.json entry that is missing, has the wrong type, or names an unsupported
// component throws modula::ConfigError (util/error.h).

[[noreturn]] inline void config_fail(const std::string& key, const std::string& what) {
  throw ConfigError("'" + key + "': " + what);
}

// j[name] as an object member, throwing ConfigError("<where>.<name>") when absent.
inline const json& require(const json& j, const std::string& where, const char* name) {
  if (!j.is_object() || !j.contains(name)) config_fail(where + "." + name, "missing");
  return j.at(name);
}

inline std::string get_string(const json& j, const std::string& where, const char* name) {
  const json& v = require(j, where, name);
  if (!v.is_string()) config_fail(where + "." + name, "expected a string");
  return v.get<std::string>();
}

inline std::string get_string_or(const json& j, const std::string& where, const char* name,
                                 const std::string& fallback) {
  if (!j.contains(name) || j.at(name).is_null()) return fallback;
  return get_string(j, where, name);
}

inline bool get_bool_or(const json& j, const std::string& where, const char* name, bool fallback) {
  if (!j.contains(name) || j.at(name).is_null()) return fallback;
  const json& v = j.at(name);
  if (!v.is_boolean()) config_fail(where + "." + name, "expected a boolean");
  return v.get<bool>();
}

inline int64_t get_int_or(const json& j, const std::string& where, const char* name, int64_t fallback) {
  if (!j.contains(name) || j.at(name).is_null()) return fallback;
  const json& v = j.at(name);
  if (!v.is_number_integer()) config_fail(where + "." + name, "expected an integer");
  return v.get<int64_t>();
}

// The "type" tag of a component object.
inline std::string type_of(const json& j, const std::string& where) {
  if (!j.is_object()) config_fail(where, "expected an object");
  return get_string(j, where, "type");
}

// A single code point given as a one-character string (e.g. Metaspace replacement).
inline char32_t get_char(const json& j, const std::string& where, const char* name) {
  std::string s = get_string(j, where, name);
  size_t i = 0;
  if (s.empty() || !unicode::is_valid_utf8(s)) config_fail(where + "." + name, "expected one character");
  char32_t c = unicode::next_code_point(s, i);
  if (i != s.size()) config_fail(where + "." + name, "expected one character");
  return c;
}

}  // namespace modula::text
