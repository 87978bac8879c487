// Checkpoint folder <-> backbone: HF state-dict keys are the parameter names.
#include <algorithm>
#include <cctype>
#include <fstream>
#include <map>
#include <set>

#include "modula/backbone/registry.h"
#include "modula/util/error.h"
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

// Whether `key` lies inside a transformer layer ("model.layers.3.", "transformer.h.3.",
// "encoder.layer.3."): a checkpoint's layer weights that the model does not take mean the
// config describes fewer (or different) layers, and the output would silently change.
bool is_checkpoint_layer_key(const std::string& key) {
  for (const char* word : {"layers.", "h.", "layer."}) {
    for (size_t at = key.find(word); at != std::string::npos; at = key.find(word, at + 1)) {
      if (at != 0 && key[at - 1] != '.') continue;
      const size_t digits = at + std::string(word).size();
      if (digits < key.size() && std::isdigit(static_cast<unsigned char>(key[digits]))) return true;
    }
  }
  return false;
}

// The layer index of a checkpoint key ("model.layers.3.mlp…" -> 3), or -1.
int64_t checkpoint_layer_index(const std::string& key) {
  for (const char* word : {"layers.", "h.", "layer."}) {
    for (size_t at = key.find(word); at != std::string::npos; at = key.find(word, at + 1)) {
      if (at != 0 && key[at - 1] != '.') continue;
      size_t i = at + std::string(word).size();
      if (i >= key.size() || !std::isdigit(static_cast<unsigned char>(key[i]))) continue;
      int64_t index = 0;
      for (; i < key.size() && std::isdigit(static_cast<unsigned char>(key[i])) && index < (int64_t{1} << 40); ++i)
        index = index * 10 + (key[i] - '0');
      return index;
    }
  }
  return -1;
}

// Before any allocation: a config asking for more layers than the checkpoint holds
// (num_hidden_layers: 1000000) would build them all and only then miss their weights.
void check_checkpoint_layer_count(const io::ModelConfig& config, const io::Checkpoint& ckpt, const std::string& dir) {
  int64_t layers = 0;
  for (const auto& key : ckpt.keys()) layers = std::max(layers, checkpoint_layer_index(key) + 1);
  if (config.num_hidden_layers > layers)
    throw ConfigError("[load] " + fs::join(dir, "config.json") + ": num_hidden_layers " +
                      std::to_string(config.num_hidden_layers) + " but the checkpoint " + ckpt.source() + " holds " +
                      std::to_string(layers) + " layer" + (layers == 1 ? "" : "s"));
}

// Before any allocation: the parameters the config's sizes describe (embeddings, positions,
// per layer attention and a gated MLP: an upper bound for every family) cannot exceed the
// checkpoint's elements by much (tied weights are stored once; buffers and heads are
// small). A config.json with hidden_size 1e6 beside a small checkpoint would otherwise
// allocate gigabytes before the first shape check.
void check_checkpoint_size(const io::ModelConfig& c, const io::Checkpoint& ckpt, const std::string& dir) {
  double held = 0;
  for (const auto& key : ckpt.keys()) {
    double n = 1;
    for (auto d : ckpt.info(key).shape) n *= static_cast<double>(d);
    held += n;
  }
  const double H = static_cast<double>(c.hidden_size), hd = static_cast<double>(c.head_dim);
  const double attention = H * hd * static_cast<double>(2 * c.num_attention_heads + 2 * c.num_key_value_heads);
  const double described =
      static_cast<double>(c.vocab_size) * H + static_cast<double>(c.max_position_embeddings) * H +
      static_cast<double>(c.num_hidden_layers) * (attention + 3 * H * static_cast<double>(c.intermediate_size));
  if (described > 2 * held + (1 << 20))
    throw ConfigError("[load] " + fs::join(dir, "config.json") + ": its sizes (hidden_size " +
                      std::to_string(c.hidden_size) + ", intermediate_size " + std::to_string(c.intermediate_size) +
                      ", vocab_size " + std::to_string(c.vocab_size) + ", max_position_embeddings " +
                      std::to_string(c.max_position_embeddings) + ", ...) describe about " +
                      std::to_string(static_cast<int64_t>(described / 1e6)) + "M parameters, but the checkpoint " +
                      ckpt.source() + " holds " + std::to_string(static_cast<int64_t>(held / 1e6)) + "M");
}

// Buffers older checkpoints save inside layers that the model recomputes (GPT-2's causal
// mask, Llama's RoPE frequencies).
bool is_recomputed_layer_buffer(const std::string& key) {
  return ends_with(key, ".attn.bias") || ends_with(key, ".attn.masked_bias") || ends_with(key, "rotary_emb.inv_freq");
}

// The checkpoint tensor for a floating-point parameter: a float dtype, finite values.
void check_loaded_weight(const io::Checkpoint& ckpt, const std::string& key, const torch::Tensor& src,
                         const torch::Tensor& dst) {
  if (dst.is_floating_point() && !src.is_floating_point())
    throw io::SafetensorsError("[load] " + ckpt.source() + ": tensor '" + key + "' has dtype " +
                               std::string(c10::toString(src.scalar_type())) + ", the model expects a floating-point " +
                               "weight");
  // One reduction per tensor: NaN/inf weights would give garbage with exit 0.
  if (src.is_floating_point() && !torch::isfinite(src).all().item<bool>())
    throw io::SafetensorsError("[load] " + ckpt.source() + ": tensor '" + key + "' holds NaN or infinite values");
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
    check_loaded_weight(ckpt, key, src, dst);
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
  std::vector<std::string> unused_layer_keys;
  for (const auto& key : report.unused_keys)
    if (is_checkpoint_layer_key(key) && !is_recomputed_layer_buffer(key)) unused_layer_keys.push_back(key);
  if (!unused_layer_keys.empty()) {
    std::string listed;
    for (size_t i = 0; i < unused_layer_keys.size() && i < 4; ++i) listed += (i ? ", " : "") + unused_layer_keys[i];
    if (unused_layer_keys.size() > 4) listed += ", ...";
    throw io::SafetensorsError("[load] " + ckpt.source() + ": " + std::to_string(unused_layer_keys.size()) +
                               " layer tensors of the checkpoint are not used by the model (" + listed +
                               "); does the config's num_hidden_layers (" +
                               std::to_string(model.config().num_hidden_layers) + ") match the checkpoint?");
  }
  return report;
}

std::shared_ptr<Backbone> load_backbone(const std::string& dir, const LoadOptions& options, LoadReport* report) {
  auto config = io::load_hf_config(dir);
  auto ckpt = io::Checkpoint::open(dir);
  check_checkpoint_layer_count(config, ckpt, dir);
  check_checkpoint_size(config, ckpt, dir);
  auto model = create_backbone(config);
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
  fs::write_file(fs::join(dir, "config.json"),
                 io::to_hf_json(config).dump(2) + "\n");  // last: marks the folder complete
}

}  // namespace modula
