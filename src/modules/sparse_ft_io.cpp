// The MODULA_SPARSE_FT folder format: save_sparse_diff / load_sparse_diff.
#include <set>
#include <stdexcept>

#include "modula/io/peft.h"
#include "modula/modules/sparse_ft.h"
#include "modula/util/error.h"
#include "modula/util/fs.h"
#include "modula/util/strings.h"

namespace modula {
namespace {

using json = nlohmann::json;
const char* const kSparseType = "MODULA_SPARSE_FT";

constexpr std::string_view kSparseFtIoTag = "sparse_ft";

// Config keys of the wrong type are a corrupt file: std::runtime_error naming it.
template <typename T>
T sparse_field(const json& c, const std::string& file, const char* key, T fallback) {
  return io::file_config_field<T>(c, file, key, std::move(fallback), kSparseFtIoTag);
}

SparseDiffOptions options_from_config(const json& c, const std::string& file) {
  SparseDiffOptions o;
  o.target_parameters(sparse_field<std::vector<std::string>>(c, file, "target_parameters", {}));
  o.exclude_parameters(sparse_field<std::vector<std::string>>(c, file, "exclude_parameters", {}));
  o.density(sparse_field<double>(c, file, "density", 0.01));
  o.k(sparse_field<int64_t>(c, file, "k", 0));
  o.base_model_name_or_path(sparse_field<std::string>(c, file, "base_model_name_or_path", ""));
  return o;
}

// Checks one parameter's tensors from the file against the model.
void check_entry(const std::string& file, const std::string& name, const torch::Tensor& param, const torch::Tensor& idx,
                 const torch::Tensor& val) {
  const std::string ik = name + ".sft_indices", vk = name + ".sft_values";
  if (idx.scalar_type() != torch::kInt64 || idx.dim() != 1)
    throw_error<std::runtime_error>(kSparseFtIoTag, file + ": tensor '" + ik + "' must be a 1-D I64 tensor");
  if (!val.is_floating_point() || val.dim() != 1)
    throw_error<std::runtime_error>(kSparseFtIoTag, file + ": tensor '" + vk + "' must be a 1-D float tensor");
  if (val.numel() != idx.numel())
    throw_error<std::runtime_error>(kSparseFtIoTag, file + ": shape mismatch: '" + vk + "' has " +
                                                        std::to_string(val.numel()) + " values, '" + ik + "' " +
                                                        std::to_string(idx.numel()) + " indices");
  if (idx.numel() == 0) return;
  const int64_t lo = idx.min().item<int64_t>(), hi = idx.max().item<int64_t>();
  if (lo < 0 || hi >= param.numel())
    throw_error<std::runtime_error>(kSparseFtIoTag, file + ": tensor '" + ik + "': index " +
                                                        std::to_string(lo < 0 ? lo : hi) +
                                                        " out of range for parameter '" + name + "' with " +
                                                        std::to_string(param.numel()) + " entries");
  if (idx.numel() > 1 && !(idx.slice(0, 1) > idx.slice(0, 0, -1)).all().item<bool>())
    throw_error<std::runtime_error>(kSparseFtIoTag, file + ": tensor '" + ik + "': indices are not sorted and unique");
}

}  // namespace

void save_sparse_diff(const SparseDiff& diff, const std::string& dir) {
  if (!diff || diff->num_trainable() == 0) throw_error(kSparseFtIoTag, "save_sparse_diff(): the diff has no entries");
  const auto& o = diff->options;
  json shapes = json::object();
  io::NamedTensors tensors;
  for (const auto& name : diff->names()) {
    shapes[name] = diff->shape(name);
    tensors.emplace_back(name + ".sft_indices", diff->indices(name).to(torch::kCPU));
    tensors.emplace_back(name + ".sft_values", diff->values(name).detach().to(torch::kCPU, torch::kFloat32));
  }
  json config = {{"peft_type", kSparseType},
                 {"target_parameters", o.target_parameters()},
                 {"exclude_parameters", o.exclude_parameters()},
                 {"density", o.density()},
                 {"k", o.k()},
                 {"num_entries", diff->num_trainable()},
                 {"parameter_shapes", shapes},
                 {"base_model_name_or_path", o.base_model_name_or_path()}};
  io::write_peft_folder(dir, config, tensors);
}

SparseDiff load_sparse_diff(Backbone& model, const std::string& dir) {
  auto folder = io::read_peft_folder(dir);
  const std::string cfg = fs::join(dir, "adapter_config.json"), file = fs::join(dir, "adapter_model.safetensors");
  if (folder.peft_type != kSparseType)
    throw_error<std::runtime_error>(kSparseFtIoTag,
                                    cfg + ": peft_type '" + folder.peft_type + "' is not " + kSparseType);
  const json shapes = folder.config.value("parameter_shapes", json::object());
  std::set<std::string> names;
  for (const auto& [key, t] : folder.tensors) {
    if (ends_with(key, ".sft_indices"))
      names.insert(key.substr(0, key.size() - 12));
    else if (ends_with(key, ".sft_values"))
      names.insert(key.substr(0, key.size() - 11));
    else
      throw_error<std::runtime_error>(kSparseFtIoTag, file + ": unexpected tensor '" + key +
                                                          "' (expected '<parameter>.sft_indices' / '.sft_values')");
  }
  auto params = model.named_parameters();
  SparseDiff diff(options_from_config(folder.config, cfg));
  for (const auto& p : params) {  // model order
    const std::string& name = p.key();
    if (!names.count(name) || is_module_param(name)) continue;
    auto ii = folder.tensors.find(name + ".sft_indices"), vi = folder.tensors.find(name + ".sft_values");
    if (ii == folder.tensors.end())
      throw_error<std::runtime_error>(
          kSparseFtIoTag, file + ": tensor '" + name + ".sft_values' has no partner '" + name + ".sft_indices'");
    if (vi == folder.tensors.end())
      throw_error<std::runtime_error>(
          kSparseFtIoTag, file + ": tensor '" + name + ".sft_indices' has no partner '" + name + ".sft_values'");
    if (shapes.contains(name) && shapes[name] != json(p.value().sizes().vec()))
      throw_error<std::runtime_error>(kSparseFtIoTag, cfg + ": shape mismatch for key '" + name +
                                                          "': the adapter was made for " + shapes[name].dump() +
                                                          ", the model's parameter is " + c10::str(p.value().sizes()));
    check_entry(file, name, p.value(), ii->second, vi->second);
    diff->add(name, p.value().sizes().vec(), ii->second.clone(), vi->second.to(torch::kFloat32).clone());
    names.erase(name);
  }
  if (!names.empty())
    throw_error<std::runtime_error>(
        kSparseFtIoTag, file + ": tensor '" + *names.begin() + ".sft_indices' names parameter '" + *names.begin() +
                            "', which the " + model.config().model_type + " model does not have");
  if (!params.is_empty()) diff->to(params.values().front().device());
  return diff;
}

}  // namespace modula
