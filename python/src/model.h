// What a Python `modula.Model` holds: a backbone, the module sets attached to it by name
// (every registry type, mixed sets and compositions alike, as Adapter handles), and the
// routing metadata they all read.
#pragma once

#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "bindings.h"
#include "modula/backbone/backbone.h"
#include "modula/modules/adapter.h"
#include "modula/routing/router.h"

namespace modula::python {

class Model {
 public:
  Model(std::shared_ptr<Backbone> backbone, std::string path) : backbone(std::move(backbone)), path(std::move(path)) {}

  std::shared_ptr<Backbone> backbone;
  std::string path;  // folder it was loaded from
  // Per-row metadata of the current call, shared by every attached module and composition.
  std::shared_ptr<RoutingContext> context = std::make_shared<RoutingContext>();

  // Attached module sets, in attach order (input modules apply in this order). Held by
  // pointer: fusions, mixed sets and compositions keep the addresses of their members.
  std::vector<std::string> order;
  std::map<std::string, std::unique_ptr<Adapter>> adapters;
  std::set<std::string> disabled;  // sets switched off (their input modules are skipped too)

  // The set `name`; std::invalid_argument listing the attached names when absent.
  Adapter& get(const std::string& name) const;
  // Takes ownership of `a` under a.name (std::invalid_argument if the name is taken).
  Adapter& add(Adapter a);
  // Forgets `name` without detaching it (the caller consumed or removed it).
  void forget(const std::string& name);
  // The input modules (prompts, prefixes, compositions' prompts) of enabled sets, in order.
  std::vector<std::shared_ptr<InputModule>> inputs() const;
  // Every parameter (backbone, then modules not registered under a site), unique, named.
  std::vector<std::pair<std::string, torch::Tensor>> named_parameters() const;
  // Sets the metadata of the next forward (replacing the previous call's).
  void set_metadata(const std::map<std::string, torch::Tensor>& metadata, const torch::Tensor& attention_mask);
};

using ModelClass = py::class_<Model, std::shared_ptr<Model>>;
ModelClass init_model(py::module_& m);
void init_modules(ModelClass& cls, py::module_& m);
void init_merge(ModelClass& cls, py::module_& m);  // merge_adapters on a model, merge_models
void init_bench(ModelClass& cls);                  // _time_forward (bench/python_overhead.py)

}  // namespace modula::python
