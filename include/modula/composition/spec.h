// The composition spec: one small language for "which modules, how routed, how
// aggregated" (docs/composition.md). Two equivalent forms:
//
//   text   stack(lang:de, fuse(task:a, task:b))
//          parallel(a, b)      avg(a:0.7, b:0.3)      route(task, a, b, c)
//          concat(prompt_a, prompt_b)
//          moe(a, b, c)        moe(top1, a, b, c)   (= route(top2, a, b, c), route(top1, …))
//   JSON   {"stack": ["lang:de", {"fuse": ["task:a", "task:b"]}]}
//          {"avg": ["a", "b"], "weights": [0.7, 0.3]}     {"route": ["a", "b", "c"], "key": "task"}
//          {"moe": ["a", "b", "c"]}   {"moe": ["a", "b", "c"], "k": 1}
//   YAML   the JSON form written as YAML (stack: [lang:de, {fuse: [task:a, task:b]}])
//
// Module names are any run of letters, digits and _ - : / @ + (no '.', no spaces); in
// avg(...) an argument may end in ":<number>", its weight (avg(stack(a, b):0.5, c:0.5)).
// moe(...) is the mixture-of-experts form of a learned route: the AST (and the canonical
// text) is route(top<k>, ...); k = 2 unless the first argument is top<k> (or JSON "k").
// parse_spec gives the AST; apply_spec.h applies it to a model.
#pragma once

#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

namespace modula {

struct SpecNode {
  enum class Kind { Module, Stack, Parallel, Average, Fuse, Route, Concat };
  Kind kind = Kind::Module;
  std::string name;              // Module: the module name; Route: the metadata key
  std::optional<double> weight;  // an argument of avg: its weight (none: uniform)
  std::vector<SpecNode> children;
  std::string where;  // where it was written: "column 7" or a JSON pointer "/stack/1"

  bool operator==(const SpecNode& o) const {  // structure, names and weights (not `where`)
    return kind == o.kind && name == o.name && weight == o.weight && children == o.children;
  }
};

// A malformed spec; what() names the problem and where it is (column and a caret line
// for the text form, a JSON pointer for the JSON/YAML forms).
class SpecError : public std::invalid_argument {
 public:
  SpecError(const std::string& message, std::string where) : std::invalid_argument(message), where(std::move(where)) {}
  std::string where;
};

// Parses either form: text starting with '{' or '"' is JSON (or a YAML flow mapping), "op:" or a newline-separated
// mapping is YAML, anything else the text form. Checks operators, arity (stack, parallel,
// avg, concat: ≥ 2; fuse ≥ 1; route: a key and ≥ 1 module; moe: ≥ 2 experts, k ≤ their
// number), weights (numbers, only in
// avg, on every argument or none). Throws SpecError.
SpecNode parse_spec(const std::string& text);
SpecNode parse_spec_json(const nlohmann::json& spec);
SpecNode parse_spec_yaml(const std::string& yaml);

// The canonical text / JSON forms; parse_spec(to_string(n)) == n and
// parse_spec_json(to_json(n)) == n.
std::string to_string(const SpecNode& node);
nlohmann::json to_json(const SpecNode& node);

// route keys that name a learned router instead of a metadata key: "softmax" (per
// example), "softmax_token", "smear" (parameter averaging) and "top<k>" (k ≥ 1).
bool learned_route_key(const std::string& key);

// "stack", "parallel", "avg", "fuse", "route", "concat" ("module" for leaves; moe parses to route).
std::string operator_name(SpecNode::Kind kind);
// Every module name the spec uses, in order of first appearance.
std::vector<std::string> module_names(const SpecNode& node);
// Throws SpecError naming the first module not in `known` (with where it is and the
// known names).
void check_module_names(const SpecNode& node, const std::set<std::string>& known);

}  // namespace modula
