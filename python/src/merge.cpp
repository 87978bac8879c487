// Merging: LoRA sets attached to a model into a new LoRA set (lora_merge.h, PEFT's
// add_weighted_adapter), and full models from a mergekit-style recipe (merge_recipe.h).
#include "model.h"
#include "modula/merge/lora_merge.h"
#include "modula/merge/merge_recipe.h"

namespace modula::python {

namespace {

void merge_adapters(Model& m, const std::vector<std::string>& names, const std::vector<double>& weights,
                    const std::string& name, const std::string& combination_type, std::optional<double> density,
                    const std::string& majority_sign_method, int64_t svd_rank, std::optional<double> svd_clamp,
                    uint64_t seed) {
  std::vector<Adapter> inputs;
  for (const auto& n : names) inputs.push_back(m.get(n));  // handles share the attached modules
  LoraMergeOptions options(weights);
  options.combination_type(combination_type)
      .density(density)
      .majority_sign_method(majority_sign_method)
      .svd_rank(svd_rank)
      .svd_clamp(svd_clamp)
      .seed(seed);
  py::gil_scoped_release release;
  m.add(merge_lora_adapters(*m.backbone, inputs, options, name));
}

// recipe: a .yaml/.json path, or the recipe as a dict (paths relative to base_dir).
py::dict merge_models(const py::object& recipe, const std::string& output, const std::string& base_dir) {
  const bool is_dict = py::isinstance<py::dict>(recipe);
  const nlohmann::json j = to_json(recipe);
  MergeReport report;
  {
    py::gil_scoped_release release;
    MergeRecipe r = is_dict ? parse_recipe(j, base_dir) : load_recipe(j.get<std::string>());
    report = run_merge(r, output);
  }
  py::dict out;
  out["output"] = report.output;
  out["tensors"] = report.tensors;
  out["parameters"] = report.parameters;
  out["copied_files"] = report.copied_files;
  return out;
}

}  // namespace

void init_merge(ModelClass& cls, py::module_& m) {
  cls.def("merge_adapters", &merge_adapters, py::arg("names"), py::arg("weights"), py::arg("name") = "merged",
          py::arg("combination_type") = "svd", py::arg("density") = py::none(),
          py::arg("majority_sign_method") = "total", py::arg("svd_rank") = 0, py::arg("svd_clamp") = py::none(),
          py::arg("seed") = 0);
  m.def("merge_models", &merge_models, py::arg("recipe"), py::arg("output") = "", py::arg("base_dir") = ".");
  m.def("lora_combination_types", &lora_combination_types);
}

}  // namespace modula::python
