// The pieces of the extension `modula._modula`, one init function per concept. Tensors
// cross as torch.Tensor (torch/extension.h's caster): the same TensorImpl on both sides,
// no copies, autograd intact.
#pragma once

#include <torch/extension.h>

#include <nlohmann/json.hpp>

namespace modula::python {

namespace py = pybind11;

// Python exceptions: modula.Error (RuntimeError) for every modula failure, modula.ConfigError
// (Error and ValueError) for std::invalid_argument (bad configs, specs, names, arguments).
void init_errors(py::module_& m);
void init_tokenizer(py::module_& m);
void init_train(py::module_& m);
// modula._modula.Model's bindings are split over model.cpp, modules.cpp and merge.cpp
// (model.h: init_model creates the class, the others add to it).

// Python values (dict, list, str, int, float, bool, None, os.PathLike) <-> JSON.
nlohmann::json to_json(const py::handle& value);
py::object from_json(const nlohmann::json& value);

}  // namespace modula::python
