// BitFit (Ben Zaken et al. 2022): train only bias terms; MODULA_BITFIT folder format.
#include "modula/modules/bitfit.h"

#include <algorithm>
#include <map>
#include <set>

#include "modula/io/peft.h"
#include "modula/modules/sparse_ft.h"
#include "modula/util/error.h"
#include "modula/util/fs.h"

namespace modula {
namespace {

using json = nlohmann::json;
const char* const kBitFitType = "MODULA_BITFIT";

constexpr std::string_view kBitfitTag = "bitfit";

bool is_bias(const std::string& name) {
  return name == "bias" || (name.size() > 5 && name.compare(name.size() - 5, 5, ".bias") == 0);
}

// The module at `dotted` under `root`, created (empty) where missing.
torch::nn::Module& module_at(torch::nn::Module& root, const std::string& dotted) {
  torch::nn::Module* m = &root;
  size_t start = 0;
  while (start < dotted.size()) {
    size_t dot = dotted.find('.', start);
    std::string part = dotted.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
    auto children = m->named_children();
    auto* found = children.find(part);
    m = found ? found->get() : m->register_module(part, std::make_shared<torch::nn::Module>()).get();
    if (dot == std::string::npos) break;
    start = dot + 1;
  }
  return *m;
}

// The selected biases: every bias, or those matching target_parameters, minus exclusions.
std::vector<std::pair<std::string, torch::Tensor>> select_biases(Backbone& model, const BitFitOptions& o) {
  const bool all = o.target_parameters().empty();
  const std::vector<std::string> targets = all ? std::vector<std::string>{"re:(.*\\.)?bias"} : o.target_parameters();
  std::vector<std::pair<std::string, torch::Tensor>> chosen;
  try {
    for (auto& p : select_parameters(model, targets, o.exclude_parameters(), "[bitfit]"))
      if (is_bias(p.first)) chosen.push_back(p);
  } catch (const std::invalid_argument&) {
    if (!all) throw;
    throw_error(kBitfitTag, "the " + model.config().model_type + " model has no bias parameters to tune");
  }
  for (const auto& t : o.target_parameters())
    if (std::none_of(chosen.begin(), chosen.end(), [&](const auto& c) { return matches_parameter(t, c.first); }))
      throw_error(kBitfitTag, "target_parameters pattern '" + t + "' matches no bias parameter of the " +
                                  model.config().model_type + " model");
  if (chosen.empty())
    throw_error(kBitfitTag, "no bias parameter selected in the " + model.config().model_type + " model");
  return chosen;
}

// Config keys of the wrong type are a corrupt file: std::runtime_error naming it.
template <typename T>
T bitfit_field(const json& c, const std::string& file, const char* key, T fallback) {
  return io::file_config_field<T>(c, file, key, std::move(fallback), kBitfitTag);
}

}  // namespace

void BitFitOptions::validate() const {
  for (const auto* list : {&target_parameters_, &exclude_parameters_})
    for (const auto& p : *list)
      if (p.empty())
        throw_error(kBitfitTag, std::string(list == &target_parameters_ ? "target_parameters" : "exclude_parameters") +
                                    " has an empty pattern");
}

BitFitImpl::BitFitImpl(Backbone& model, BitFitOptions options_) : options(std::move(options_)) {
  options.validate();
  auto chosen = select_biases(model, options);
  for (auto& p : model.parameters()) p.set_requires_grad(false);
  for (auto& [name, tensor] : chosen) {
    const auto dot = name.rfind('.');
    auto& parent =
        dot == std::string::npos ? static_cast<torch::nn::Module&>(*this) : module_at(*this, name.substr(0, dot));
    parent.register_parameter(name.substr(dot == std::string::npos ? 0 : dot + 1), tensor, /*requires_grad=*/true);
    names_.push_back(name);
  }
}

int64_t BitFitImpl::num_trainable() const {
  int64_t n = 0;
  for (const auto& p : parameters()) n += p.numel();
  return n;
}

void BitFitImpl::save(const std::string& dir) const {
  io::NamedTensors tensors;
  for (const auto& p : named_parameters()) tensors.emplace_back(p.key(), p.value().detach().to(torch::kCPU));
  json config = {{"peft_type", kBitFitType},
                 {"target_parameters", options.target_parameters()},
                 {"exclude_parameters", options.exclude_parameters()},
                 {"base_model_name_or_path", options.base_model_name_or_path()}};
  io::write_peft_folder(dir, config, tensors);
}

BitFit load_bitfit(Backbone& model, const std::string& dir) {
  auto folder = io::read_peft_folder(dir);
  const std::string cfg = fs::join(dir, "adapter_config.json"), file = fs::join(dir, "adapter_model.safetensors");
  if (folder.peft_type != kBitFitType)
    throw_error<std::runtime_error>(kBitfitTag, cfg + ": peft_type '" + folder.peft_type + "' is not " + kBitFitType);
  BitFitOptions o;
  o.target_parameters(bitfit_field<std::vector<std::string>>(folder.config, cfg, "target_parameters", {}));
  o.exclude_parameters(bitfit_field<std::vector<std::string>>(folder.config, cfg, "exclude_parameters", {}));
  o.base_model_name_or_path(bitfit_field<std::string>(folder.config, cfg, "base_model_name_or_path", ""));
  auto params = model.named_parameters();
  for (const auto& [key, t] : folder.tensors) {  // validate everything before writing
    auto* p = params.find(key);
    if (!p)
      throw_error<std::runtime_error>(kBitfitTag, file + ": tensor '" + key + "' names a parameter the " +
                                                      model.config().model_type + " model does not have");
    if (!is_bias(key)) throw_error<std::runtime_error>(kBitfitTag, file + ": tensor '" + key + "' is not a bias");
    if (t.sizes() != p->sizes())
      throw_error<std::runtime_error>(kBitfitTag, file + ": shape mismatch for key '" + key +
                                                      "': " + c10::str(t.sizes()) + " in the file, " +
                                                      c10::str(p->sizes()) + " in the model");
    if (!t.is_floating_point())
      throw_error<std::runtime_error>(kBitfitTag, file + ": tensor '" + key + "' is not a float tensor");
  }
  std::set<std::string> selected;
  for (const auto& c : select_biases(model, o)) selected.insert(c.first);
  for (const auto& name : selected)
    if (!folder.tensors.count(name))
      throw_error<std::runtime_error>(kBitfitTag, file + ": missing tensor '" + name + "' (selected by the config)");
  for (const auto& [key, t] : folder.tensors)
    if (!selected.count(key))
      throw_error<std::runtime_error>(
          kBitfitTag,
          file + ": tensor '" + key + "' is not selected by the config's target_parameters/exclude_parameters");
  BitFit bitfit(model, o);
  torch::NoGradGuard no_grad;
  for (const auto& name : bitfit->names()) params[name].copy_(folder.tensors.at(name));
  return bitfit;
}

}  // namespace modula
