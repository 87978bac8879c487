#include "modula/io/yaml.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>

#include "modula/util/error.h"
#include "modula/util/utf8.h"

namespace modula::io {
namespace {

using json = nlohmann::json;

constexpr std::string_view kYamlTag = "yaml";
// Expanded nodes of one document: aliases are copied into the JSON value, so ten lines of
// nested aliases ("billion laughs") would otherwise expand to 10^9 nodes.
constexpr size_t kYamlMaxNodes = 100'000;
constexpr int kYamlMaxDepth = 256;

bool yaml_is_digit(char c) { return c >= '0' && c <= '9'; }
bool yaml_is_hex(char c) { return yaml_is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'); }

// Hand-written scanners: std::regex recurses per character and overflows the stack on long values.
size_t yaml_digits(const std::string& s, size_t i) {
  while (i < s.size() && yaml_is_digit(s[i])) ++i;
  return i;
}

// [-+]?[0-9]+
bool yaml_is_int(const std::string& s) {
  size_t i = !s.empty() && (s[0] == '-' || s[0] == '+') ? 1 : 0;
  return i < s.size() && yaml_digits(s, i) == s.size();
}

// 0x[0-9a-fA-F]+
bool yaml_is_hex_int(const std::string& s) {
  if (s.size() < 3 || s[0] != '0' || s[1] != 'x') return false;
  for (size_t i = 2; i < s.size(); ++i)
    if (!yaml_is_hex(s[i])) return false;
  return true;
}

// [-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?
bool yaml_is_float(const std::string& s) {
  size_t i = !s.empty() && (s[0] == '-' || s[0] == '+') ? 1 : 0;
  if (i < s.size() && s[i] == '.') {
    const size_t end = yaml_digits(s, i + 1);
    if (end == i + 1) return false;
    i = end;
  } else {
    const size_t end = yaml_digits(s, i);
    if (end == i) return false;
    i = end;
    if (i < s.size() && s[i] == '.') i = yaml_digits(s, i + 1);
  }
  if (i < s.size() && (s[i] == 'e' || s[i] == 'E')) {
    ++i;
    if (i < s.size() && (s[i] == '-' || s[i] == '+')) ++i;
    const size_t end = yaml_digits(s, i);
    if (end == i) return false;
    i = end;
  }
  return i == s.size();
}

// YAML 1.2 core schema for plain scalars (yaml.org/spec/1.2.2, 10.3.2).
json scalar(const YAML::Node& n) {
  const std::string& s = n.Scalar();
  if (n.Tag() == "!") return s;  // quoted
  if (s.empty() || s == "~" || s == "null" || s == "Null" || s == "NULL") return nullptr;
  if (s == "true" || s == "True" || s == "TRUE") return true;
  if (s == "false" || s == "False" || s == "FALSE") return false;
  try {
    if (yaml_is_int(s)) return std::stoll(s);
    if (yaml_is_hex_int(s)) return std::stoll(s, nullptr, 16);
  } catch (const std::out_of_range&) {
    return std::strtod(s.c_str(), nullptr);  // beyond int64: a double (±inf beyond double)
  }
  if (yaml_is_float(s)) return std::strtod(s.c_str(), nullptr);
  if (s == ".inf" || s == "+.inf" || s == ".Inf" || s == "+.Inf") return INFINITY;
  if (s == "-.inf" || s == "-.Inf") return -INFINITY;
  return s;
}

class YamlConverter {
 public:
  explicit YamlConverter(const std::string& source) : source_(source) {}

  json convert(const YAML::Node& n, int depth = 0) {
    if (++nodes_ > kYamlMaxNodes)
      throw_error(kYamlTag, source_ + ": more than " + std::to_string(kYamlMaxNodes) +
                                " values once aliases are expanded (nested aliases?)");
    if (depth > kYamlMaxDepth)
      throw_error(kYamlTag, source_ + ": nested deeper than " + std::to_string(kYamlMaxDepth) + " levels at line " +
                                std::to_string(n.Mark().line + 1));
    switch (n.Type()) {
      case YAML::NodeType::Null:
      case YAML::NodeType::Undefined:
        return nullptr;
      case YAML::NodeType::Scalar:
        return scalar(utf8_text(n));
      case YAML::NodeType::Sequence: {
        json a = json::array();
        for (const auto& item : n) a.push_back(convert(item, depth + 1));
        return a;
      }
      case YAML::NodeType::Map: {
        json o = json::object();
        for (const auto& kv : n) {
          if (kv.first.IsScalar()) utf8_text(kv.first);
          o[kv.first.as<std::string>()] = convert(kv.second, depth + 1);
        }
        return o;
      }
    }
    return nullptr;
  }

 private:
  // A scalar as yaml-cpp decoded it: escapes ("\x80" is a byte there) and its guess of
  // UTF-16/32 from leading NUL bytes can give bytes JSON cannot hold.
  const YAML::Node& utf8_text(const YAML::Node& n) const {
    if (utf8::first_invalid(n.Scalar()) != std::string::npos)
      throw_error(kYamlTag, source_ + ": the value at line " + std::to_string(n.Mark().line + 1) + ", column " +
                                std::to_string(n.Mark().column + 1) + " is not UTF-8 text");
    return n;
  }

  const std::string& source_;
  size_t nodes_ = 0;
};

}  // namespace

json yaml_to_json(const std::string& text, const std::string& source) {
  // YAML is UTF-8 here, and JSON cannot hold other bytes (a later dump would throw).
  if (size_t at = utf8::first_invalid(text); at != std::string::npos) {
    const size_t line_start = at == 0 ? 0 : text.rfind('\n', at - 1) + 1;  // npos + 1 = 0: the first line
    const auto line = 1 + std::count(text.begin(), text.begin() + static_cast<std::ptrdiff_t>(at), '\n');
    char byte[8];
    std::snprintf(byte, sizeof byte, "0x%02X", static_cast<unsigned char>(text[at]));
    throw_error(kYamlTag, source + ": not UTF-8 at line " + std::to_string(line) + ", column " +
                              std::to_string(at - line_start + 1) + " (byte " + byte + ")");
  }
  try {
    return YamlConverter(source).convert(YAML::Load(text));
  } catch (const YAML::Exception& e) {
    throw_error(kYamlTag, source + ": invalid YAML at line " + std::to_string(e.mark.line + 1) + ", column " +
                              std::to_string(e.mark.column + 1) + ": " + e.msg);
  }
}

}  // namespace modula::io
