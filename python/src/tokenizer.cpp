// modula._modula.Tokenizer: tokenizer.json / SentencePiece files (text/tokenizer.h).
#include "modula/text/tokenizer.h"

#include "bindings.h"

namespace modula::python {

void init_tokenizer(py::module_& m) {
  using text::Tokenizer;
  py::class_<Tokenizer, std::shared_ptr<Tokenizer>>(
      m, "Tokenizer",
      "A tokenizer.json (BPE, WordPiece, Unigram) or SentencePiece .model file, or a folder holding one.\n"
      "encode(text, add_special_tokens=True) -> ids; decode(ids, skip_special_tokens=True) -> text.")
      .def(py::init([](const std::string& path) { return std::shared_ptr<Tokenizer>(Tokenizer::from_file(path)); }),
           py::arg("path"))
      .def("encode", &Tokenizer::encode, py::arg("text"), py::arg("add_special_tokens") = true,
           py::call_guard<py::gil_scoped_release>())
      .def("decode", &Tokenizer::decode, py::arg("ids"), py::arg("skip_special_tokens") = true,
           py::call_guard<py::gil_scoped_release>())
      .def_property_readonly("vocab_size", &Tokenizer::vocab_size)
      .def("token_to_id", &Tokenizer::token_to_id, py::arg("token"))
      .def("id_to_token", &Tokenizer::id_to_token, py::arg("id"));
}

}  // namespace modula::python
