// modula._modula.Model: loading, the forward pass with routing metadata, generation,
// parameters and saving. Attaching modules is modules.cpp.
#include "model.h"

#include <algorithm>

#include "modula/backbone/generate.h"
#include "modula/backbone/registry.h"
#include "modula/util/error.h"

namespace modula::python {

namespace {

constexpr std::string_view kModelTag = "python";

torch::ScalarType parse_dtype(const std::string& name) {
  if (name == "float32" || name == "fp32") return torch::kFloat32;
  if (name == "bfloat16" || name == "bf16") return torch::kBFloat16;
  if (name == "float16" || name == "fp16") return torch::kFloat16;
  throw_error(kModelTag, "dtype '" + name + "': expected float32, bfloat16 or float16");
}

std::shared_ptr<Model> load_model(const std::string& path, const std::string& device, const std::string& dtype,
                                  bool freeze) {
  LoadOptions options;
  options.device = torch::Device(device);
  if (!dtype.empty()) options.dtype = parse_dtype(dtype);
  auto backbone = load_backbone(path, options);
  if (freeze) freeze_backbone(*backbone);
  return std::make_shared<Model>(std::move(backbone), path);
}

// (logits or None, last hidden state).
py::tuple forward(Model& m, const torch::Tensor& input_ids, const std::optional<torch::Tensor>& attention_mask,
                  const std::optional<torch::Tensor>& token_type_ids, const std::optional<torch::Tensor>& position_ids,
                  const std::optional<torch::Tensor>& inputs_embeds,
                  const std::map<std::string, torch::Tensor>& metadata) {
  BackboneOutput out;
  {
    py::gil_scoped_release release;
    BackboneInput in;
    in.input_ids = input_ids;
    if (attention_mask) in.attention_mask = *attention_mask;
    if (token_type_ids) in.token_type_ids = *token_type_ids;
    if (position_ids) in.position_ids = *position_ids;
    if (inputs_embeds) in.inputs_embeds = *inputs_embeds;
    m.set_metadata(metadata, in.attention_mask);
    auto inputs = m.inputs();
    out = inputs.empty() ? m.backbone->forward(in) : forward_with(*m.backbone, inputs, std::move(in));
  }
  py::object logits = out.logits.defined() ? py::cast(out.logits) : py::none();
  return py::make_tuple(logits, out.last_hidden_state);
}

std::vector<int64_t> generate(Model& m, const std::vector<int64_t>& prompt, int64_t max_new_tokens, double temperature,
                              int64_t top_k, double top_p, uint64_t seed,
                              const std::optional<std::vector<int64_t>>& stop_ids,
                              const std::map<std::string, torch::Tensor>& metadata, const py::object& on_token) {
  GenerateOptions o;
  o.max_new_tokens = max_new_tokens;
  o.temperature = temperature;
  o.top_k = top_k;
  o.top_p = top_p;
  o.seed = seed;
  o.stop_ids = stop_ids ? *stop_ids : m.backbone->config().eos_token_ids;
  std::function<bool(int64_t)> callback;
  if (!on_token.is_none())
    callback = [&on_token](int64_t id) {
      py::gil_scoped_acquire acquire;
      py::object keep = on_token(id);
      return keep.is_none() || keep.cast<bool>();  // returning False stops
    };
  py::gil_scoped_release release;
  m.set_metadata(metadata, torch::Tensor());
  auto inputs = m.inputs();
  PrepareInput prepare = [&](BackboneInput& in) {
    KVCache scratch;  // generate() supplies the cache
    for (const auto& input : inputs) input->prepare(*m.backbone, in, scratch);
  };
  torch::NoGradGuard no_grad;
  return modula::generate(*m.backbone, prompt, o, callback, prepare);
}

}  // namespace

Adapter& Model::get(const std::string& name) const {
  auto it = adapters.find(name);
  if (it != adapters.end()) return *it->second;
  std::string known;
  for (const auto& n : order) known += (known.empty() ? "" : ", ") + n;
  throw_error(kModelTag, "no module set '" + name + "' attached (attached: " + (known.empty() ? "none" : known) + ")");
}

Adapter& Model::add(Adapter a) {
  check(!adapters.count(a.name), kModelTag, "a module set named '" + a.name + "' is already attached");
  const std::string name = a.name;
  order.push_back(name);
  return *(adapters[name] = std::make_unique<Adapter>(std::move(a)));
}

void Model::forget(const std::string& name) {
  adapters.erase(name);
  disabled.erase(name);
  order.erase(std::remove(order.begin(), order.end(), name), order.end());
}

std::vector<std::shared_ptr<InputModule>> Model::inputs() const {
  std::vector<std::shared_ptr<InputModule>> out;
  for (const auto& name : order) {
    const auto& a = adapters.at(name);
    if (a->input && !disabled.count(name)) out.push_back(a->input);
  }
  return out;
}

std::vector<std::pair<std::string, torch::Tensor>> Model::named_parameters() const {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  std::set<const void*> seen;
  auto add_one = [&](const std::string& name, const torch::Tensor& t) {
    if (seen.insert(t.unsafeGetTensorImpl()).second) out.emplace_back(name, t);
  };
  for (const auto& p : backbone->named_parameters()) add_one(p.key(), p.value());
  for (const auto& name : order) {
    const auto& a = adapters.at(name);
    if (a->input)
      for (const auto& p : a->input->named_parameters()) add_one(name + ".input." + p.key(), p.value());
    int64_t k = 0;  // what is not registered under a site (hypernetworks, sparse diffs) has no name
    for (const auto& p : a->parameters())
      if (!seen.count(p.unsafeGetTensorImpl())) add_one(name + ".state." + std::to_string(k++), p);
  }
  return out;
}

void Model::set_metadata(const std::map<std::string, torch::Tensor>& metadata, const torch::Tensor& attention_mask) {
  context->clear();
  for (const auto& [key, ids] : metadata) context->set(key, ids);
  if (attention_mask.defined()) context->set_mask(attention_mask);
}

ModelClass init_model(py::module_& m) {
  ModelClass cls(m, "Model", "A backbone with attached modules (see modula.Model).");
  cls.def_readonly("path", &Model::path)
      .def_property_readonly("config", [](const Model& self) { return from_json(self.backbone->config().raw); })
      .def_property_readonly("model_type", [](const Model& self) { return self.backbone->config().model_type; })
      .def_property_readonly("head", [](const Model& self) { return to_string(self.backbone->head()); })
      .def_property_readonly("causal", [](const Model& self) { return self.backbone->causal(); })
      .def_property_readonly("training", [](const Model& self) { return self.backbone->is_training(); })
      .def("set_training", [](Model& self, bool on) { self.backbone->train(on); })
      .def("forward", &forward, py::arg("input_ids"), py::arg("attention_mask") = py::none(),
           py::arg("token_type_ids") = py::none(), py::arg("position_ids") = py::none(),
           py::arg("inputs_embeds") = py::none(), py::arg("metadata") = std::map<std::string, torch::Tensor>{})
      .def("generate", &generate, py::arg("prompt"), py::arg("max_new_tokens") = 32, py::arg("temperature") = 0.0,
           py::arg("top_k") = 0, py::arg("top_p") = 1.0, py::arg("seed") = 0, py::arg("stop_ids") = py::none(),
           py::arg("metadata") = std::map<std::string, torch::Tensor>{}, py::arg("on_token") = py::none())
      .def("named_parameters", &Model::named_parameters)
      .def("state_dict", [](Model& self) { return state_dict(*self.backbone); })
      .def(
          "save", [](Model& self, const std::string& dir) { save_backbone(*self.backbone, dir); }, py::arg("dir"),
          py::call_guard<py::gil_scoped_release>())
      .def("freeze_backbone", [](Model& self) { freeze_backbone(*self.backbone); });
  m.def("load_model", &load_model, py::arg("path"), py::arg("device") = "cpu", py::arg("dtype") = "",
        py::arg("freeze_backbone") = true, py::call_guard<py::gil_scoped_release>());
  m.def("supported_model_types", &supported_model_types);
  return cls;
}

}  // namespace modula::python
