// The extension's entry point: modula._modula, one init function per concept (bindings.h).
#include "model.h"

PYBIND11_MODULE(_modula, m) {
  m.doc() = "modula's C++ engine; use the `modula` package, not this module.";
  m.attr("__version__") = MODULA_VERSION;
  modula::python::init_errors(m);
  auto model = modula::python::init_model(m);
  modula::python::init_modules(model, m);
  modula::python::init_merge(model, m);
  modula::python::init_bench(model);
  modula::python::init_tokenizer(m);
  modula::python::init_train(m);
}
