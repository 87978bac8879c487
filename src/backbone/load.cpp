// Checkpoint folder <-> backbone: HF state-dict keys are the parameter names.
#include <fstream>
#include <map>
#include <set>

#include "modula/backbone/registry.h"
#include "modula/util/fs.h"
#include "modula/util/strings.h"

namespace modula {
namespace {

// "model.layers.0..." -> "layers.0..." for checkpoints of the bare model.
std::string strip_first(const std::string& key) {
  auto dot = key.find('.');
  return dot == std::string::npos ? key : key.substr(dot + 1);
}

torch::ScalarType default_dtype(const io::ModelConfig& c, const LoadOptions& o) {
  if (o.dtype) return *o.dtype;
  if (!o.device.is_cuda()) return torch::kFloat32;
  return c.torch_dtype == "float16" ? torch::kHalf : torch::kBFloat16;
}

}  // namespace

LoadReport load_weights(Backbone& model, const io::Checkpoint& ckpt) {
  LoadReport report;
  std::map<std::string, std::string> tied;
  for (const auto& [key, target] : model.tied_weights()) tied[key] = target;
  std::set<std::string> used;
  torch::NoGradGuard no_grad;
  auto assign = [&](const std::string& name, torch::Tensor& dst) {
    std::string key = name;
    if (!ckpt.contains(key) && ckpt.contains(strip_first(name))) key = strip_first(name);
    if (!ckpt.contains(key)) {
      throw io::SafetensorsError("[load] " + ckpt.source() + ": missing tensor '" + name + "' (" +
                                 std::to_string(ckpt.keys().size()) + " tensors in the checkpoint)");
    }
    auto src = ckpt.get(key);
    if (src.sizes() != dst.sizes())
      throw io::SafetensorsError("[load] " + ckpt.source() + ": tensor '" + key + "' has shape " +
                                 c10::str(src.sizes()) + ", the model expects " + c10::str(dst.sizes()));
    dst.copy_(src);
    used.insert(key);
  };
  for (auto& p : model.named_parameters())
    if (!is_module_param(p.key())) assign(p.key(), p.value());
  for (auto& b : model.named_buffers())
    if (!is_module_param(b.key())) assign(b.key(), b.value());
  for (const auto& key : ckpt.keys()) {
    if (used.count(key)) continue;
    if (tied.count(key) || tied.count("model." + key))
      report.tied_keys.push_back(key);
    else
      report.unused_keys.push_back(key);
  }
  return report;
}

std::shared_ptr<Backbone> load_backbone(const std::string& dir, const LoadOptions& options, LoadReport* report) {
  auto config = io::load_hf_config(dir);
  auto model = create_backbone(config);
  auto ckpt = io::Checkpoint::open(dir);
  auto r = load_weights(*model, ckpt);
  if (report) *report = std::move(r);
  model->to(options.device, default_dtype(config, options));
  model->eval();
  return model;
}

io::NamedTensors state_dict(Backbone& model) {
  io::NamedTensors out;
  for (auto& p : model.named_parameters())
    if (!is_module_param(p.key())) out.emplace_back(p.key(), p.value().detach().cpu());
  for (auto& b : model.named_buffers())
    if (!is_module_param(b.key())) out.emplace_back(b.key(), b.value().detach().cpu());
  return out;
}

void save_backbone(Backbone& model, const std::string& dir) {
  fs::make_dirs(dir);
  io::save_safetensors(fs::join(dir, "model.safetensors"), state_dict(model), {{"format", "pt"}});
  auto config = model.config();
  auto dtype = model.parameters().empty() ? torch::kFloat32 : model.parameters().front().scalar_type();
  config.torch_dtype = dtype == torch::kBFloat16 ? "bfloat16" : dtype == torch::kHalf ? "float16" : "float32";
  auto tmp = fs::join(dir, "config.json.tmp");
  {
    std::ofstream out(tmp);
    out << io::to_hf_json(config).dump(2) << "\n";
    if (!out) throw io::SafetensorsError("[save] cannot write " + tmp);
  }
  fs::rename(tmp, fs::join(dir, "config.json"));
}

}  // namespace modula
