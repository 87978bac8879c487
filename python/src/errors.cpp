// C++ exceptions -> Python exceptions carrying modula's message ("[component] what").
#include <c10/util/Exception.h>

#include "bindings.h"

namespace modula::python {

void init_errors(py::module_& m) {
  // Kept alive for the interpreter's lifetime (the translator below refers to them).
  static py::handle error = PyErr_NewExceptionWithDoc(
      "modula.Error", "A failure inside modula; the message names the component, e.g. '[config] cannot open ...'.",
      PyExc_RuntimeError, nullptr);
  static py::handle config_error = PyErr_NewExceptionWithDoc(
      "modula.ConfigError", "A bad argument, config value, spec or folder (C++ std::invalid_argument).",
      py::make_tuple(error, py::handle(PyExc_ValueError)).release().ptr(), nullptr);
  m.attr("Error") = error;
  m.attr("ConfigError") = config_error;
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const py::error_already_set&) {
      throw;  // a Python callback's own exception passes through unchanged
    } catch (const py::builtin_exception&) {
      throw;
    } catch (const std::invalid_argument& e) {
      PyErr_SetString(config_error.ptr(), e.what());
    } catch (const c10::Error& e) {
      PyErr_SetString(error.ptr(), e.what_without_backtrace());
    } catch (const std::exception& e) {
      PyErr_SetString(error.ptr(), e.what());
    }
  });
}

}  // namespace modula::python
