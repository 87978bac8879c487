// Routing in a train config: the `metadata` list, and the checks of what routes by task or
// metadata (module routing keys and their n_tasks / num_tasks, route(<key>, ...) arities).
#include "config_routing.h"

#include <fstream>
#include <set>

#include "modula/composition/spec.h"
#include "modula/util/error.h"
#include "modula/util/fs.h"
#include "modula/util/json.h"
#include "modula/util/strings.h"

namespace modula::train {
namespace {

using json = nlohmann::json;

constexpr std::string_view kConfigRoutingTag = "train";

[[noreturn]] void fail(const std::string& source, const std::string& msg) {
  throw_error<ConfigError>(kConfigRoutingTag, source + ": " + msg);
}

void collect_routes(const SpecNode& n, std::vector<const SpecNode*>& out) {
  if (n.kind == SpecNode::Kind::Route) out.push_back(&n);
  for (const auto& c : n.children) collect_routes(c, out);
}

// A module config that may route: where its keys are named in messages.
struct RoutedConfig {
  std::string prefix, suffix;  // key k is named prefix + k + suffix
  json config;
  std::string key(const std::string& k) const { return prefix + k + suffix; }
};

std::vector<RoutedConfig> module_configs(const TrainConfig& c, bool folders) {
  std::vector<RoutedConfig> out;
  for (size_t i = 0; i < c.modules.size(); ++i) {
    const auto& m = c.modules[i];
    const std::string at = "modules[" + std::to_string(i) + "]";
    if (!m.config.is_null()) {
      out.push_back({"'" + at + ".config.", "'", m.config});
    } else if (folders) {  // an unreadable folder is reported when it is loaded
      const std::string file = fs::join(m.path, "adapter_config.json");
      std::ifstream in(file);
      if (!in) continue;
      json j;
      try {
        j = parse_json(in);
      } catch (const JsonTextError&) {
        continue;  // reported when the folder is loaded
      }
      if (j.is_object()) out.push_back({"'", "' in " + file + " (" + at + ")", j});
    }
  }
  if (c.continual.module.is_object()) out.push_back({"'continual.module.", "'", c.continual.module});
  return out;
}

}  // namespace

namespace detail {

std::vector<MetadataField> parse_metadata(const json& v, const std::string& source) {
  if (!v.is_array())
    fail(source, "'metadata' must be a list of {field: NAME, values: [...]}, got " + std::string(v.type_name()));
  std::vector<MetadataField> out;
  std::set<std::string> names;
  for (size_t i = 0; i < v.size(); ++i) {
    const json& e = v[i];
    const std::string at = "metadata[" + std::to_string(i) + "]";
    MetadataField m;
    if (e.is_string()) {  // shorthand: the field alone, values from the data
      m.name = e.get<std::string>();
    } else if (e.is_object()) {
      for (const auto& kv : e.items())
        if (kv.key() != "field" && kv.key() != "values")
          fail(source, "unknown key '" + at + "." + kv.key() + "' (known: field, values)");
      if (!e.contains("field") || !e["field"].is_string())
        fail(source, "'" + at + ".field' must be a string (the record field to route by)");
      m.name = e["field"].get<std::string>();
      if (e.contains("values") && !e["values"].is_null()) {
        const json& vals = e["values"];
        if (!vals.is_array() || vals.empty())
          fail(source, "'" + at + ".values' must be a non-empty list of strings or integers, got " + vals.dump());
        std::set<std::string> seen;
        for (const auto& x : vals) {
          if (!x.is_string() && !x.is_number_integer())
            fail(source, "'" + at + ".values' must hold strings or integers, found " + x.dump());
          std::string s = x.is_string() ? x.get<std::string>() : x.dump();
          if (!seen.insert(s).second) fail(source, "'" + at + ".values' lists '" + s + "' twice");
          m.values.push_back(s);
        }
      }
    } else {
      fail(source, "'" + at + "' must be a mapping {field: NAME, values: [...]} or a field name, got " + e.dump());
    }
    if (m.name.empty()) fail(source, "'" + at + ".field' must not be empty");
    if (m.name == "task")
      fail(source, "'" + at + ".field': 'task' is reserved (every row's task index in 'tasks'); name another field");
    if (learned_route_key(m.name))
      fail(source, "'" + at + ".field': '" + m.name +
                       "' is the name of a learned router in route(...) (softmax, softmax_token, smear, top<k>); "
                       "rename the field in the data");
    if (!names.insert(m.name).second) fail(source, "'" + at + ".field': '" + m.name + "' is declared twice");
    out.push_back(std::move(m));
  }
  return out;
}

}  // namespace detail

void check_routing(const TrainConfig& c, bool folders) {
  const std::string& source = c.source;
  std::vector<std::string> names;
  for (const auto& f : c.metadata) names.push_back(f.name);
  const std::string declared = names.empty() ? "none declared" : "declared: " + joined(names);
  auto field = [&](const std::string& key) -> const MetadataField* {
    for (const auto& f : c.metadata)
      if (f.name == key) return &f;
    return nullptr;
  };
  for (const auto& m : module_configs(c, folders)) {
    const std::string type =
        m.config.value("peft_type", json()).is_string() ? m.config["peft_type"].get<std::string>() : std::string();
    const bool routed = type == "POLY" || type == "MODULA_HYPER_LORA";
    const bool has_key = m.config.contains("routing_key") && !m.config["routing_key"].is_null();
    if (!has_key) continue;
    const json& k = m.config["routing_key"];
    if (!routed)
      fail(source, m.key("routing_key") + ": only POLY and MODULA_HYPER_LORA modules route by a key (peft_type is '" +
                       type + "')");
    if (!k.is_string() || k.get<std::string>().empty())
      fail(source, m.key("routing_key") + " must be \"task\" or a metadata field name, got " + k.dump());
    const std::string key = k.get<std::string>();
    if (key == "task") continue;
    const MetadataField* f = field(key);
    if (!f)
      fail(source, m.key("routing_key") + " is '" + key + "', which is neither 'task' nor a field in 'metadata' (" +
                       declared + ")");
    if (f->values.empty()) continue;  // known once the data is read
    const char* count_key = type == "POLY" ? "n_tasks" : "num_tasks";
    const json& n = m.config.value(count_key, json(1));
    const auto V = static_cast<int64_t>(f->values.size());
    if (n.is_number_integer() && n.get<int64_t>() < V)
      fail(source, m.key(count_key) + " is " + n.dump() + " but metadata field '" + key + "' has " + std::to_string(V) +
                       " values (" + joined(f->values) + "): a module routed by '" + key + "' needs " + count_key +
                       " >= " + std::to_string(V));
  }
  if (c.compose.empty()) return;
  SpecNode spec;
  try {
    spec = parse_spec(c.compose);
  } catch (const SpecError& e) {
    fail(source, std::string("'compose': ") + e.what());
  }
  std::vector<const SpecNode*> routes;
  collect_routes(spec, routes);
  for (const auto* r : routes) {
    if (learned_route_key(r->name)) continue;  // route(softmax|softmax_token|smear|top<k>, ...): a learned router
    const auto n = std::to_string(r->children.size());
    if (r->name == "task") {
      if (r->children.size() != c.tasks.size())
        fail(source, "'compose': route(task, ...) has " + n + " arguments; it needs one per task (" +
                         std::to_string(c.tasks.size()) + ", in the order of 'tasks')");
      continue;
    }
    const MetadataField* f = field(r->name);
    if (!f)
      fail(source, "'compose': route(" + r->name +
                       ", ...): the trainer routes by 'task' (the batch's task index in 'tasks'), by a field in "
                       "'metadata' (" +
                       declared + ") or by a learned router (softmax, softmax_token, smear, top<k>)");
    if (!f->values.empty() && r->children.size() != f->values.size())
      fail(source, "'compose': route(" + r->name + ", ...) has " + n + " arguments; it needs one per value of " +
                       "metadata field '" + r->name + "' (" + std::to_string(f->values.size()) + ": " +
                       joined(f->values) + ", in that order)");
  }
}

}  // namespace modula::train
