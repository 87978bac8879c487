// The composition spec: text, JSON and YAML forms → one AST (docs/composition.md).
#include "modula/composition/spec.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "modula/io/yaml.h"

namespace modula {
namespace {

using json = nlohmann::json;
using Kind = SpecNode::Kind;

// Operators nested deeper than this are an error: the parsers recurse per level, and each
// node keeps its JSON pointer, so memory grows with depth².
constexpr size_t kSpecMaxDepth = 256;

std::string spec_depth_message() { return "operators nested deeper than " + std::to_string(kSpecMaxDepth) + " levels"; }

const std::vector<std::pair<std::string, Kind>>& operators() {
  static const std::vector<std::pair<std::string, Kind>> ops = {
      {"stack", Kind::Stack}, {"parallel", Kind::Parallel}, {"avg", Kind::Average}, {"fuse", Kind::Fuse},
      {"route", Kind::Route}, {"concat", Kind::Concat},     {"moe", Kind::Route}};  // moe: route(top<k>, …)
  return ops;
}

std::string operator_list() {
  std::string s;
  for (const auto& [name, kind] : operators()) s += (s.empty() ? "" : ", ") + name;
  return s;
}

const Kind* find_operator(const std::string& name) {
  for (const auto& op : operators())
    if (op.first == name) return &op.second;
  return nullptr;
}

// The fewest module arguments an operator takes (route: after its key).
size_t min_arity(Kind k) {
  switch (k) {
    case Kind::Fuse:
    case Kind::Route:
      return 1;
    default:
      return 2;
  }
}

// Shortest decimal that reads back as the same double.
std::string format_number(double v) {
  char buf[40];
  for (int precision = 1; precision <= 17; ++precision) {
    std::snprintf(buf, sizeof buf, "%.*g", precision, v);
    if (std::strtod(buf, nullptr) == v) break;
  }
  return buf;
}

// A full-string number (strtod rules, finite); nullopt otherwise.
std::optional<double> parse_number(const std::string& s) {
  if (s.empty()) return std::nullopt;
  char* end = nullptr;
  double v = std::strtod(s.c_str(), &end);
  if (end != s.c_str() + s.size() || !std::isfinite(v)) return std::nullopt;
  return v;
}

bool looks_numeric(const std::string& s) {
  return !s.empty() && (std::isdigit(static_cast<unsigned char>(s[0])) || s[0] == '-' || s[0] == '+' || s[0] == '.');
}

bool is_name_char(char c) {
  return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' || c == ':' || c == '/' || c == '@' ||
         c == '+' || c == '.';
}

// Splits "name" / "name:weight"; `fail(offset, message)` reports a problem at an offset in `word`.
template <typename Fail>
SpecNode module_from_word(const std::string& word, Fail fail) {
  SpecNode n;
  n.name = word;
  auto colon = word.rfind(':');
  if (colon != std::string::npos && looks_numeric(word.substr(colon + 1))) {
    auto w = parse_number(word.substr(colon + 1));
    if (!w) fail(colon + 1, "weight '" + word.substr(colon + 1) + "' is not a number");
    n.weight = *w;
    n.name = word.substr(0, colon);
  }
  if (n.name.empty()) fail(0, "empty module name in '" + word + "'");
  // The characters the text form reads (JSON/YAML names must survive to_string and back).
  for (size_t i = 0; i < n.name.size(); ++i)
    if (!is_name_char(n.name[i]))
      fail(i, "module name '" + n.name + "' has a character other than letters, digits and _-:/@+ at offset " +
                  std::to_string(i));
  auto dot = n.name.find('.');
  if (dot != std::string::npos) fail(dot, "module name '" + n.name + "' may not contain '.'");
  return n;
}

// Arity, weights and route keys of an operator node whose children are parsed;
// `fail(child index or -1, message)`.
template <typename Fail>
void check_operator(SpecNode& n, Fail fail) {
  const auto op = operator_name(n.kind);
  if (n.kind == Kind::Route) {
    if (n.children.empty()) fail(-1, "route needs a metadata key and at least one module: route(key, a, b, …)");
    const auto& key = n.children.front();
    if (key.kind != Kind::Module || key.weight) fail(0, "route's first argument must be a metadata key (a plain name)");
    n.name = key.name;
    n.children.erase(n.children.begin());
  }
  if (n.children.size() < min_arity(n.kind))
    fail(-1, op + " needs at least " + std::to_string(min_arity(n.kind)) + " module" +
                 (min_arity(n.kind) > 1 ? "s" : "") + ", got " + std::to_string(n.children.size()));
  size_t weighted = 0;
  for (size_t i = 0; i < n.children.size(); ++i) {
    const auto& c = n.children[i];
    if (c.weight && n.kind != Kind::Average)
      fail(static_cast<int>(i), "weights (':number') are only allowed inside avg(…), not in " + op);
    weighted += c.weight ? 1 : 0;
    if (n.kind == Kind::Concat && c.kind != Kind::Module)
      fail(static_cast<int>(i),
           "concat joins prompt modules; argument " + std::to_string(i + 1) + " is " + operator_name(c.kind) + "(…)");
  }
  if (n.kind == Kind::Average && weighted > 0 && weighted < n.children.size()) {
    for (size_t i = 0; i < n.children.size(); ++i)
      if (!n.children[i].weight)
        fail(static_cast<int>(i),
             "avg argument " + std::to_string(i + 1) +
                 " has no weight but others do: give every argument a weight (name:number) or none");
  }
  if (n.kind == Kind::Average && weighted > 0) {
    double sum = 0;
    for (const auto& c : n.children) sum += *c.weight;
    if (sum == 0) fail(-1, "avg weights sum to zero");
    // Each weight is divided by the sum: an overflowing sum (1e308 + 1e308) makes them all 0.
    if (!std::isfinite(sum)) fail(-1, "avg weights overflow: their sum is not finite");
  }
}

// moe(…) before check_operator: route(top<k>, …) with k = 2 unless the first argument is
// top<k> (the text form) or the caller gave the key (JSON "k" / "key").
template <typename Fail>
void moe_to_route(SpecNode& n, bool has_key, Fail fail) {
  if (has_key) return;
  if (!n.children.empty() && n.children.front().kind == Kind::Module && !n.children.front().weight) {
    const auto& first = n.children.front().name;
    if (first.compare(0, 3, "top") == 0 && learned_route_key(first)) return;  // moe(top1, a, b)
    if (learned_route_key(first))
      fail(0, "moe(…) routes each token to its top-k experts; '" + first + "' is not top<k> (use route(" + first +
                  ", …) for that router)");
  }
  SpecNode key;
  key.name = "top2";
  key.where = n.where;
  n.children.insert(n.children.begin(), key);
}

// moe(…) after check_operator: at least two experts, k of them or fewer.
template <typename Fail>
void check_moe(const SpecNode& n, Fail fail) {
  if (n.name.compare(0, 3, "top") != 0 || !learned_route_key(n.name))
    fail(-1, "moe(…) takes top<k> as its key (moe(top1, a, b)), got '" + n.name + "'");
  const auto k = std::stoll(n.name.substr(3));
  if (n.children.size() < 2) fail(-1, "moe needs at least 2 experts, got " + std::to_string(n.children.size()));
  if (k < 1 || static_cast<size_t>(k) > n.children.size())
    fail(-1, "moe(" + n.name + ", …) selects " + std::to_string(k) + " of " + std::to_string(n.children.size()) +
                 " experts");
}

// Recursive descent over the text form.
class TextParser {
 public:
  explicit TextParser(const std::string& text) : s_(text) {}

  SpecNode parse() {
    skip_ws();
    if (i_ == s_.size()) fail(i_, "empty spec");
    auto node = parse_expr();
    skip_ws();
    if (i_ < s_.size()) {
      if (s_[i_] == ')') fail(i_, "unbalanced ')': no '(' to close");
      fail(i_, std::string("unexpected '") + s_[i_] + "' after the end of the spec");
    }
    if (node.weight) fail(0, "weights (':number') are only allowed inside avg(…)");
    return node;
  }

 private:
  [[noreturn]] void fail(size_t pos, const std::string& msg) const {
    const auto where = "column " + std::to_string(pos + 1);
    throw SpecError("[spec] " + where + ": " + msg + "\n    " + s_ + "\n    " + std::string(pos, ' ') + "^", where);
  }

  void skip_ws() {
    while (i_ < s_.size() && std::isspace(static_cast<unsigned char>(s_[i_]))) ++i_;
  }

  std::string read_word() {
    size_t start = i_;
    while (i_ < s_.size() && is_name_char(s_[i_])) ++i_;
    return s_.substr(start, i_ - start);
  }

  SpecNode parse_expr() {
    auto node = parse_term();
    skip_ws();
    if (i_ < s_.size() && s_[i_] == ':') {  // weight after an operator: avg(stack(a, b):0.5, …)
      ++i_;
      skip_ws();
      size_t at = i_;
      auto word = read_word();
      auto w = parse_number(word);
      if (!w) fail(at, "weight after ':' must be a number, got '" + word + "'");
      node.weight = *w;
    }
    return node;
  }

  SpecNode parse_term() {
    skip_ws();
    const size_t start = i_;
    if (i_ == s_.size()) fail(i_, "expected a module name or an operator, got the end of the text");
    auto word = read_word();
    if (word.empty()) fail(i_, std::string("expected a module name or an operator, got '") + s_[i_] + "'");
    skip_ws();
    if (i_ < s_.size() && s_[i_] == '(') return parse_call(word, start);
    auto node = module_from_word(word, [&](size_t off, const std::string& m) { fail(start + off, m); });
    node.where = "column " + std::to_string(start + 1);
    return node;
  }

  SpecNode parse_call(const std::string& op, size_t start) {
    const Kind* kind = find_operator(op);
    if (!kind) fail(start, "unknown operator '" + op + "' (operators: " + operator_list() + ")");
    if (++depth_ > kSpecMaxDepth) fail(start, spec_depth_message());
    const size_t open = i_++;
    SpecNode node;
    node.kind = *kind;
    node.where = "column " + std::to_string(start + 1);
    std::vector<size_t> starts;
    skip_ws();
    if (i_ < s_.size() && s_[i_] == ')') {
      ++i_;
    } else {
      while (true) {
        skip_ws();
        starts.push_back(i_);
        node.children.push_back(parse_expr());
        skip_ws();
        if (i_ == s_.size()) fail(open, "unbalanced '(': no matching ')'");
        if (s_[i_] == ',') {
          ++i_;
          continue;
        }
        if (s_[i_] == ')') {
          ++i_;
          break;
        }
        fail(i_, std::string("expected ',' or ')', got '") + s_[i_] + "'");
      }
    }
    auto at = [&](int child, const std::string& m) {
      fail(child < 0 ? start
                     : starts[static_cast<size_t>(child) + (node.kind == Kind::Route && !node.name.empty() ? 1 : 0)],
           m);
    };
    if (op == "moe") {
      const auto before = node.children.size();
      moe_to_route(node, false, at);
      if (node.children.size() > before) starts.insert(starts.begin(), start);  // the implied key top2
    }
    check_operator(node, at);
    if (op == "moe") check_moe(node, at);
    --depth_;
    return node;
  }

  const std::string& s_;
  size_t i_ = 0;
  size_t depth_ = 0;  // operator calls open at i_
};

[[noreturn]] void fail_json(const std::string& where, const std::string& msg) {
  throw SpecError("[spec] " + (where.empty() ? std::string("/") : where) + ": " + msg, where.empty() ? "/" : where);
}

SpecNode parse_json_node(const json& j, const std::string& where, size_t depth = 0) {
  if (depth > kSpecMaxDepth) fail_json(where, spec_depth_message());
  if (j.is_string()) {
    auto node = module_from_word(j.get<std::string>(), [&](size_t, const std::string& m) { fail_json(where, m); });
    node.where = where;
    return node;
  }
  if (!j.is_object()) fail_json(where, "expected a module name or an operator object, got " + j.dump());
  SpecNode node;
  node.where = where;
  std::string op;
  for (auto it = j.begin(); it != j.end(); ++it) {
    if (it.key() == "weights" || it.key() == "key" || it.key() == "k") continue;
    if (!find_operator(it.key()))
      fail_json(where, "unknown operator '" + it.key() + "' (operators: " + operator_list() + ")");
    if (!op.empty()) fail_json(where, "one operator per object, got '" + op + "' and '" + it.key() + "'");
    op = it.key();
  }
  if (op.empty()) fail_json(where, "object has no operator (operators: " + operator_list() + ")");
  node.kind = *find_operator(op);
  const auto& args = j.at(op);
  if (!args.is_array()) fail_json(where + "/" + op, op + " takes a list of modules, got " + args.dump());
  for (size_t i = 0; i < args.size(); ++i)
    node.children.push_back(parse_json_node(args[i], where + "/" + op + "/" + std::to_string(i), depth + 1));
  if (j.contains("key")) {
    if (node.kind != Kind::Route) fail_json(where + "/key", "'key' belongs to route only");
    if (!j["key"].is_string() || j["key"].get<std::string>().empty())
      fail_json(where + "/key", "route key must be a non-empty string, got " + j["key"].dump());
    SpecNode key = module_from_word(j["key"].get<std::string>(), [&](size_t, const std::string& m) {
      fail_json(where + "/key", "route key: " + m);
    });
    if (key.weight) fail_json(where + "/key", "route key must be a plain name, got " + j["key"].dump());
    node.children.insert(node.children.begin(), key);
  } else if (j.contains("k")) {
    if (op != "moe") fail_json(where + "/k", "'k' belongs to moe only");
    if (!j["k"].is_number_integer() || j["k"].get<int64_t>() < 1)
      fail_json(where + "/k", "moe's k must be a positive integer, got " + j["k"].dump());
    SpecNode key;
    key.name = "top" + std::to_string(j["k"].get<int64_t>());
    node.children.insert(node.children.begin(), key);
  } else if (op == "moe") {
    moe_to_route(node, false, [&](int child, const std::string& m) {
      fail_json(where + "/" + op + "/" + std::to_string(child), m);
    });
  } else if (node.kind == Kind::Route) {
    fail_json(where, "route needs \"key\": the metadata key that picks the module per row");
  }
  if (j.contains("weights")) {
    const auto& w = j["weights"];
    if (node.kind != Kind::Average) fail_json(where + "/weights", "weights belong to avg only");
    if (!w.is_array() || w.size() != args.size())
      fail_json(where + "/weights",
                "weights must be a list of " + std::to_string(args.size()) + " numbers, got " + w.dump());
    for (size_t i = 0; i < w.size(); ++i) {
      if (!w[i].is_number())
        fail_json(where + "/weights/" + std::to_string(i), "weight is not a number: " + w[i].dump());
      if (node.children[i].weight) fail_json(where + "/" + op + "/" + std::to_string(i), "weight given twice");
      node.children[i].weight = w[i].get<double>();
      if (!std::isfinite(*node.children[i].weight))
        fail_json(where + "/weights/" + std::to_string(i), "weight is not finite");
    }
  }
  auto at = [&](int child, const std::string& m) {  // route's key is never a child here
    fail_json(child < 0 ? where : where + "/" + op + "/" + std::to_string(child), m);
  };
  check_operator(node, at);
  if (op == "moe") check_moe(node, at);
  return node;
}

// ^\s*[A-Za-z_]+\s*:(\s|$), scanned by hand (std::regex recurses per character).
bool looks_like_yaml_mapping(const std::string& text) {
  auto space = [&](size_t i) { return std::isspace(static_cast<unsigned char>(text[i])) != 0; };
  size_t i = 0;
  while (i < text.size() && space(i)) ++i;
  const size_t key = i;
  while (i < text.size() && (std::isalpha(static_cast<unsigned char>(text[i])) || text[i] == '_')) ++i;
  if (i == key) return false;
  while (i < text.size() && space(i)) ++i;
  if (i == text.size() || text[i] != ':') return false;
  return i + 1 == text.size() || space(i + 1);
}

}  // namespace

std::string operator_name(Kind kind) {
  for (const auto& [name, k] : operators())
    if (k == kind) return name;
  return "module";
}

SpecNode parse_spec_json(const json& spec) { return parse_json_node(spec, ""); }

SpecNode parse_spec_yaml(const std::string& yaml) {
  json j;
  try {
    j = io::yaml_to_json(yaml, "spec");
  } catch (const std::invalid_argument& e) {
    std::string msg = e.what();
    auto at = msg.find("line ");  // "... invalid YAML at line L, column C: why"
    if (at == std::string::npos) throw SpecError("[spec] " + msg, "YAML");
    throw SpecError("[spec] YAML " + msg.substr(at), msg.substr(at, msg.find(':', at) - at));
  }
  return parse_spec_json(j);
}

SpecNode parse_spec(const std::string& text) {
  auto first = text.find_first_not_of(" \t\r\n");
  if (first != std::string::npos && (text[first] == '{' || text[first] == '"')) {
    if (json::accept(text)) return parse_spec_json(json::parse(text));
    return parse_spec_yaml(text);  // a YAML flow mapping such as {stack: [a, b]}
  }
  if (looks_like_yaml_mapping(text)) return parse_spec_yaml(text);
  return TextParser(text).parse();
}

std::string to_string(const SpecNode& n) {
  std::string s;
  if (n.kind == Kind::Module) {
    s = n.name;
  } else {
    s = operator_name(n.kind) + "(";
    if (n.kind == Kind::Route) s += n.name + (n.children.empty() ? "" : ", ");
    for (size_t i = 0; i < n.children.size(); ++i) s += (i ? ", " : "") + to_string(n.children[i]);
    s += ")";
  }
  if (n.weight) s += ":" + format_number(*n.weight);
  return s;
}

json to_json(const SpecNode& n) {
  if (n.kind == Kind::Module) return n.name;
  json args = json::array(), weights = json::array();
  for (const auto& c : n.children) {
    args.push_back(to_json(c));
    if (c.weight) weights.push_back(*c.weight);
  }
  json out = {{operator_name(n.kind), args}};
  if (n.kind == Kind::Route) out["key"] = n.name;
  if (!weights.empty()) out["weights"] = weights;
  return out;
}

std::vector<std::string> module_names(const SpecNode& n) {
  std::vector<std::string> out;
  if (n.kind == Kind::Module) return {n.name};
  for (const auto& c : n.children)
    for (auto& name : module_names(c))
      if (std::find(out.begin(), out.end(), name) == out.end()) out.push_back(name);
  return out;
}

void check_module_names(const SpecNode& n, const std::set<std::string>& known) {
  if (n.kind == Kind::Module) {
    if (known.count(n.name)) return;
    std::string list;
    for (const auto& k : known) list += (list.empty() ? "" : ", ") + k;
    const auto where = n.where.empty() ? std::string("spec") : n.where;
    throw SpecError(
        "[spec] " + where + ": unknown module name '" + n.name + "' (known: " + (list.empty() ? "none" : list) + ")",
        n.where);
  }
  for (const auto& c : n.children) check_module_names(c, known);
}

bool learned_route_key(const std::string& key) {
  if (key == "softmax" || key == "softmax_token" || key == "smear") return true;
  return key.size() > 3 && key.size() <= 7 && key.compare(0, 3, "top") == 0 &&
         key.find_first_not_of("0123456789", 3) == std::string::npos;
}

}  // namespace modula
