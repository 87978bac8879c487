// Attaching module sets of any registry type to a Model (folders or fresh configs), and
// what is done to them by name: enable, scale, merge, save, remove; mixed batches
// (mixed.h) and composition specs (apply_spec.h).
#include "model.h"
#include "modula/composition/apply_spec.h"
#include "modula/composition/composition_module.h"
#include "modula/composition/mixed.h"
#include "modula/composition/registry.h"
#include "modula/util/dtype.h"
#include "modula/util/error.h"

namespace modula::python {

namespace {

constexpr std::string_view kModulesTag = "python";

ModuleEnv env_for(Model& m, const std::string& name, double scale, int64_t task) {
  check(!name.empty() && name.find('.') == std::string::npos, kModulesTag,
        "module name '" + name + "' must be non-empty and without '.'");
  ModuleEnv env;
  env.name = name;
  env.scale = scale;
  env.context = m.context;
  env.task = task;
  for (const auto& [n, a] : m.adapters) env.members[n] = a.get();  // fusions and compositions name them
  return env;
}

void finish(Adapter& a, double scale, bool trainable) {
  if (scale != 1.0) a.set_scale(scale);
  if (!trainable)
    for (auto& p : a.parameters()) p.set_requires_grad(false);
}

// source: a module folder (str / os.PathLike) or a fresh config (dict with "peft_type").
void attach(Model& m, const std::string& name, const py::object& source, double scale, int64_t task, bool trainable) {
  const bool is_config = py::isinstance<py::dict>(source);
  const nlohmann::json config = is_config ? to_json(source) : nlohmann::json();
  const std::string dir = is_config ? "" : to_json(source).get<std::string>();
  py::gil_scoped_release release;
  auto env = env_for(m, name, scale, task);
  Adapter a = is_config ? build_module(*m.backbone, config, env) : load_module(*m.backbone, dir, env);
  a.name = name;
  finish(m.add(std::move(a)), scale, trainable);
}

// Names of the sets `a` refers to (fusion / composition members), which must stay attached.
std::vector<std::string> members_of(const Adapter& a) {
  std::vector<std::string> out;
  if (const auto* c = composition_of(a))
    for (const auto& [n, _] : c->members) out.push_back(n);
  if (a.config.is_object() && a.config.contains("adapters") && a.config["adapters"].is_array())
    for (const auto& n : a.config["adapters"])
      if (n.is_string()) out.push_back(n.get<std::string>());
  return out;
}

void remove(Model& m, const std::string& name) {
  Adapter& a = m.get(name);
  for (const auto& other : m.order)
    for (const auto& member : members_of(*m.adapters.at(other)))
      check(other == name || member != name, kModulesTag,
            "cannot remove '" + name + "': '" + other + "' uses it (remove that first)");
  a.remove();
  m.forget(name);
}

void set_enabled(Model& m, const std::string& name, bool on) {
  m.get(name).set_enabled(on);
  if (on)
    m.disabled.erase(name);
  else
    m.disabled.insert(name);
}

py::dict info(const Model& m, const std::string& name) {
  const Adapter& a = m.get(name);
  py::dict d;
  d["name"] = name;
  d["peft_type"] = a.peft_type;
  d["config"] = from_json(a.config);
  d["num_parameters"] = a.num_trainable();
  d["mergeable"] = a.mergeable();
  d["enabled"] = !m.disabled.count(name);
  d["sites"] = a.modules.size();
  return d;
}

// The set's parameters under the names Model::named_parameters gives them.
std::vector<std::pair<std::string, torch::Tensor>> module_parameters(const Model& m, const std::string& name) {
  std::map<const void*, std::string> names;
  for (const auto& [n, t] : m.named_parameters()) names[t.unsafeGetTensorImpl()] = n;
  std::vector<std::pair<std::string, torch::Tensor>> out;
  std::set<const void*> seen;
  for (const auto& p : m.get(name).parameters())
    if (seen.insert(p.unsafeGetTensorImpl()).second) out.emplace_back(names.at(p.unsafeGetTensorImpl()), p);
  return out;
}

// Mixes attached sets into one set `name` whose rows are routed by metadata `key` (row ids
// from row_ids); the sets are consumed. `lora_dtype`: the LoRA banks stored in that dtype
// (store_banks_as; "" = the model's).
void mix(Model& m, const std::vector<std::string>& names, const std::string& name, const std::string& key,
         const std::string& lora_dtype) {
  const auto dtype = lora_dtype.empty()
                         ? std::nullopt
                         : std::optional<torch::ScalarType>(storage_dtype(lora_dtype, "mix", "lora_dtype"));
  std::vector<Adapter> sets;
  for (const auto& n : names) m.get(n);  // all present before any is consumed
  for (const auto& n : names) {
    sets.push_back(std::move(*m.adapters.at(n)));
    m.forget(n);
  }
  py::gil_scoped_release release;
  m.add(mix_adapters(std::move(sets), name, m.context, key));
  if (dtype) store_banks_as(m.get(name), *dtype);
}

torch::Tensor rows(const Model& m, const std::string& mixed, const std::vector<std::string>& per_row) {
  return row_ids(m.get(mixed), per_row);
}

// A composition spec (text, or a dict in the JSON form) over attached sets, attached as `name`.
void compose(Model& m, const py::object& spec, const std::string& name, const py::object& fusion) {
  SpecNode node = py::isinstance<py::str>(spec) ? parse_spec(spec.cast<std::string>()) : parse_spec_json(to_json(spec));
  ComposeOptions options;
  options.name(name).context(m.context);
  if (!fusion.is_none()) options.fusion(to_json(fusion));
  std::map<std::string, const Adapter*> members;
  for (const auto& [n, a] : m.adapters) members[n] = a.get();
  py::gil_scoped_release release;
  m.add(composition_adapter(apply_spec(*m.backbone, node, members, options), name));
}

}  // namespace

void init_modules(ModelClass& cls, py::module_& m) {
  cls.def("attach", &attach, py::arg("name"), py::arg("source"), py::arg("scale") = 1.0, py::arg("task") = -1,
          py::arg("trainable") = true)
      .def("remove", &remove, py::arg("name"))
      .def("set_enabled", &set_enabled, py::arg("name"), py::arg("on"))
      .def("set_scale", [](Model& self, const std::string& name, double s) { self.get(name).set_scale(s); })
      .def("merge", [](Model& self, const std::string& name) { self.get(name).merge(); })
      .def("unmerge", [](Model& self, const std::string& name) { self.get(name).unmerge(); })
      .def("save_module",
           [](Model& self, const std::string& name, const std::string& dir) { save_module(self.get(name), dir); })
      .def("module_names", [](const Model& self) { return self.order; })
      .def("module_info", &info)
      .def("module_parameters", &module_parameters)
      .def("mix", &mix, py::arg("names"), py::arg("name") = "mixed", py::arg("key") = "adapter",
           py::arg("lora_dtype") = "")
      .def("row_ids", &rows, py::arg("mixed"), py::arg("per_row"))
      .def("compose", &compose, py::arg("spec"), py::arg("name") = "compose", py::arg("fusion") = py::none());
  m.def("supported_module_types", &supported_peft_types);
}

}  // namespace modula::python
