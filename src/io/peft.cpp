#include "modula/io/peft.h"

#include <fstream>

#include "modula/util/fs.h"
#include "modula/util/json.h"

namespace modula::io {

// NaN or infinite module weights give garbage outputs with no other sign: refused on read
// (a corrupt or diverged download) and on write (a diverged run, a merge that overflowed).
static void check_finite_tensor(const std::string& file, const std::string& key, const torch::Tensor& t) {
  if (t.is_floating_point() && !torch::isfinite(t).all().item<bool>())
    throw SafetensorsError("[peft] " + file + ": tensor '" + key + "' holds NaN or infinite values");
}

PeftFolder read_peft_folder(const std::string& dir) {
  PeftFolder f;
  f.dir = dir;
  const std::string config_path = fs::join(dir, "adapter_config.json");
  std::ifstream in(config_path);
  if (!in) throw std::runtime_error("[peft] cannot open " + config_path);
  try {
    f.config = parse_json(in);
  } catch (const JsonTextError& e) {
    throw std::runtime_error("[peft] " + config_path + ": invalid JSON: " + e.what());
  }
  if (!f.config.is_object() || !f.config.contains("peft_type") || !f.config["peft_type"].is_string())
    throw std::runtime_error("[peft] " + config_path + ": missing string key 'peft_type'");
  f.peft_type = f.config["peft_type"].get<std::string>();
  const std::string weights = fs::join(dir, "adapter_model.safetensors");
  if (!fs::is_file(weights)) {
    std::string hint = fs::is_file(fs::join(dir, "adapter_model.bin"))
                           ? " (adapter_model.bin is not supported: convert to safetensors)"
                           : "";
    throw std::runtime_error("[peft] " + weights + ": no such file" + hint);
  }
  auto file = SafetensorsFile::open(weights);
  for (const auto& key : file.keys()) {
    f.tensors[key] = file.get(key);
    check_finite_tensor(weights, key, f.tensors[key]);
  }
  return f;
}

void write_peft_folder(const std::string& dir, const nlohmann::json& config, const NamedTensors& tensors) {
  const std::string weights = fs::join(dir, "adapter_model.safetensors");
  for (const auto& [key, t] : tensors) check_finite_tensor(weights, key, t);
  fs::make_dirs(dir);
  save_safetensors(weights, tensors, {{"format", "pt"}});
  fs::write_file(fs::join(dir, "adapter_config.json"), config.dump(2) + "\n");
}

}  // namespace modula::io
