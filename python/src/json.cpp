// Python values <-> nlohmann::json: configs, recipes and results cross as plain dicts.
#include "bindings.h"
#include "modula/util/error.h"

namespace modula::python {

nlohmann::json to_json(const py::handle& value) {
  if (value.is_none()) return nullptr;
  if (py::isinstance<py::bool_>(value)) return value.cast<bool>();
  if (py::isinstance<py::int_>(value)) return value.cast<int64_t>();
  if (py::isinstance<py::float_>(value)) return value.cast<double>();
  if (py::isinstance<py::str>(value)) return value.cast<std::string>();
  if (py::hasattr(value, "__fspath__")) return value.attr("__fspath__")().cast<std::string>();
  if (py::isinstance<py::dict>(value)) {
    auto out = nlohmann::json::object();
    for (const auto& [k, v] : value.cast<py::dict>()) out[py::str(k).cast<std::string>()] = to_json(v);
    return out;
  }
  if (py::isinstance<py::list>(value) || py::isinstance<py::tuple>(value)) {
    auto out = nlohmann::json::array();
    for (const auto& v : value) out.push_back(to_json(v));
    return out;
  }
  throw_error("python", "cannot convert a " + py::str(value.get_type()).cast<std::string>() + " to JSON");
}

py::object from_json(const nlohmann::json& value) {
  switch (value.type()) {
    case nlohmann::json::value_t::null:
      return py::none();
    case nlohmann::json::value_t::boolean:
      return py::bool_(value.get<bool>());
    case nlohmann::json::value_t::number_integer:
      return py::int_(value.get<int64_t>());
    case nlohmann::json::value_t::number_unsigned:
      return py::int_(value.get<uint64_t>());
    case nlohmann::json::value_t::number_float:
      return py::float_(value.get<double>());
    case nlohmann::json::value_t::string:
      return py::str(value.get<std::string>());
    case nlohmann::json::value_t::array: {
      py::list out;
      for (const auto& v : value) out.append(from_json(v));
      return std::move(out);
    }
    case nlohmann::json::value_t::object: {
      py::dict out;
      for (const auto& [k, v] : value.items()) out[py::str(k)] = from_json(v);
      return std::move(out);
    }
    default:
      return py::none();
  }
}

}  // namespace modula::python
