// MODULA_HYPER_LORA folders (docs/module-formats.md) and the export of one task's
// generated modules as a plain PEFT LoRA folder.
#include <algorithm>
#include <set>

#include "modula/io/peft.h"
#include "modula/modules/hypernetwork.h"
#include "modula/util/error.h"
#include "modula/util/fs.h"

namespace modula {
namespace {

using json = nlohmann::json;

constexpr std::string_view kHypernetworkIoTag = "hyper_lora";

template <typename T>
T hyper_field(const json& c, const std::string& where, const char* key, T fallback) {
  return io::file_config_field<T, std::invalid_argument>(c, where, key, std::move(fallback), kHypernetworkIoTag);
}

// The saved site list must be the one the backbone yields now (site embeddings are by row).
void check_sites(const HyperLoraImpl& hyper, const json& config, const std::string& where) {
  if (!config.contains("sites")) return;
  auto saved = hyper_field<std::vector<std::string>>(config, where, "sites", {});
  const auto& now = hyper.sites();
  for (size_t i = 0; i < std::max(saved.size(), now.size()); ++i) {
    std::string a = i < saved.size() ? saved[i] : "(none)", b = i < now.size() ? now[i].path : "(none)";
    if (a != b)
      throw_error(kHypernetworkIoTag, where + ": site " + std::to_string(i) + " is '" + a + "' in the file but '" + b +
                                          "' in this backbone (target_modules select other sites)");
  }
}

// Copies every parameter from `tensors`; names the file and key of a missing, misshaped or extra tensor.
void copy_parameters(HyperLoraImpl& hyper, const std::map<std::string, torch::Tensor>& tensors,
                     const std::string& file) {
  std::set<std::string> used;
  torch::NoGradGuard no_grad;
  for (auto& p : hyper.named_parameters()) {
    auto it = tensors.find(p.key());
    if (it == tensors.end()) throw_error(kHypernetworkIoTag, file + ": no tensor '" + p.key() + "'");
    if (it->second.sizes() != p.value().sizes())
      throw_error(kHypernetworkIoTag, file + ": tensor '" + p.key() + "' has shape " + c10::str(it->second.sizes()) +
                                          ", expected " + c10::str(p.value().sizes()));
    p.value().copy_(it->second);
    used.insert(p.key());
  }
  for (const auto& kv : tensors)
    if (!used.count(kv.first))
      throw_error(kHypernetworkIoTag, file + ": tensor '" + kv.first + "' is no parameter of this hypernetwork");
}

}  // namespace

HyperLoraOptions hyper_lora_options(const json& c, const std::string& where) {
  if (!c.is_object()) throw_error(kHypernetworkIoTag, where + ": the config must be a JSON object");
  HyperLoraOptions d;
  auto o = HyperLoraOptions(hyper_field<int64_t>(c, where, "num_tasks", d.num_tasks()))
               .task_embedding_dim(hyper_field<int64_t>(c, where, "task_embedding_dim", d.task_embedding_dim()))
               .layer_embedding_dim(hyper_field<int64_t>(c, where, "layer_embedding_dim", d.layer_embedding_dim()))
               .hidden(hyper_field<int64_t>(c, where, "hidden", d.hidden()))
               .r(hyper_field<int64_t>(c, where, "r", d.r()))
               .alpha(hyper_field<double>(c, where, "alpha", d.alpha()))
               .target_modules(c.value("target_modules", d.target_modules()))
               .seed(hyper_field<uint64_t>(c, where, "seed", d.seed()))
               .routing_key(hyper_field<std::string>(c, where, "routing_key", d.routing_key()));
  try {
    o.validate();
  } catch (const std::invalid_argument& e) {
    const std::string prefix = "[hyper_lora] ", what = e.what();
    throw_error(kHypernetworkIoTag, where + ": " + (what.rfind(prefix, 0) == 0 ? what.substr(prefix.size()) : what));
  }
  return o;
}

void save_hyper_lora(const HyperLoraImpl& hyper, const std::string& dir) {
  io::NamedTensors tensors;
  for (const auto& p : hyper.named_parameters()) tensors.emplace_back(p.key(), p.value().detach().cpu().contiguous());
  io::write_peft_folder(dir, hyper.config(), tensors);
}

HyperLora load_hyper_lora(Backbone& model, const std::string& dir, const std::string& name) {
  auto folder = io::read_peft_folder(dir);
  const std::string config_path = fs::join(dir, "adapter_config.json");
  if (folder.peft_type != kHyperLoraType)
    throw_error(kHypernetworkIoTag, config_path + ": peft_type '" + folder.peft_type + "' is not " + kHyperLoraType);
  HyperLora hyper(model, hyper_lora_options(folder.config, config_path));
  check_sites(*hyper, folder.config, config_path);
  copy_parameters(*hyper, folder.tensors, fs::join(dir, "adapter_model.safetensors"));
  hyper->attach(model, name);
  return hyper;
}

void export_lora(const HyperLoraImpl& hyper, const torch::Tensor& task_embedding, const std::string& dir) {
  if (!task_embedding.defined() || task_embedding.dim() != 1)
    throw_error(kHypernetworkIoTag, "export_lora takes one task embedding [d_t]");
  json targets = json::array();
  io::NamedTensors tensors;
  bool conv1d = false;
  torch::NoGradGuard no_grad;
  auto modules = hyper.modules_for_embedding(task_embedding);
  for (size_t i = 0; i < modules.size(); ++i) {
    const auto& m = modules[i];
    targets.push_back(m.site);  // full paths: PEFT matches a path equal to an entry
    conv1d = conv1d || hyper.sites()[i].conv1d_layout;
    tensors.emplace_back(io::kPeftPrefix + m.site + ".lora_A.weight", m.lora_A.cpu().contiguous());
    tensors.emplace_back(io::kPeftPrefix + m.site + ".lora_B.weight", m.lora_B.cpu().contiguous());
  }
  json config = {{"peft_type", "LORA"},       {"r", hyper.options.r()}, {"lora_alpha", hyper.options.alpha()},
                 {"target_modules", targets}, {"lora_dropout", 0.0},    {"bias", "none"},
                 {"fan_in_fan_out", conv1d},  {"inference_mode", true}};
  io::write_peft_folder(dir, config, tensors);
}

}  // namespace modula
