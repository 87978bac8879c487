#include <iostream>
#include <map>
#include <set>

#include "commands.h"
#include "modula/backbone/registry.h"
#include "modula/io/peft.h"
#include "modula/io/safetensors.h"
#include "modula/util/fs.h"

namespace modula::cli {
namespace {

void inspect_adapter(const std::string& dir) {
  auto folder = io::read_peft_folder(dir);
  std::map<std::string, int64_t> kinds;  // tensor-name suffix -> count
  std::set<std::string> sites;
  int64_t params = 0;
  for (const auto& [key, t] : folder.tensors) {
    params += t.numel();
    std::string rest = key.rfind(io::kPeftPrefix, 0) == 0 ? key.substr(io::kPeftPrefix.size()) : key;
    for (const char* marker : {".lora_", ".ia3_l", ".adapter_", ".sft_"}) {
      auto at = rest.find(marker);
      if (at != std::string::npos) {
        sites.insert(rest.substr(0, at));
        kinds[rest.substr(at + 1)]++;
        break;
      }
    }
  }
  std::cout << "peft_type         " << folder.peft_type << "\n";
  for (const char* k :
       {"task_type", "r", "lora_alpha", "use_rslora", "use_dora", "target_modules", "feedforward_modules",
        "rank_pattern", "alpha_pattern", "num_virtual_tokens", "token_dim", "num_layers"})
    if (folder.config.contains(k) && !folder.config[k].is_null())
      std::cout << "  " << k << " " << folder.config[k].dump() << "\n";
  std::cout << "tensors           " << folder.tensors.size() << "\n"
            << "parameters        " << params << "\n";
  if (!sites.empty()) std::cout << "sites             " << sites.size() << " (e.g. " << *sites.begin() << ")\n";
}

}  // namespace

void add_inspect(CLI::App& app) {
  auto* cmd = app.add_subcommand("inspect", "Show architecture, parameter count, dtypes and layers of a model folder");
  static std::string dir;
  cmd->add_option("dir", dir, "Model folder (config.json + safetensors) or adapter folder (adapter_config.json)")
      ->required();
  cmd->callback([] {
    if (fs::is_file(fs::join(dir, "adapter_config.json"))) return inspect_adapter(dir);
    auto config = io::load_hf_config(dir);
    auto ckpt = io::Checkpoint::open(dir);
    std::map<std::string, int64_t> dtypes;
    int64_t params = 0;
    for (const auto& key : ckpt.keys()) {
      const auto& info = ckpt.info(key);
      int64_t n = 1;
      for (auto d : info.shape) n *= d;
      params += n;
      dtypes[io::dtype_to_string(info.dtype)] += n;
    }
    std::cout << "model_type        " << config.model_type << "\n"
              << "architecture      " << (config.architecture().empty() ? "(none)" : config.architecture()) << "\n"
              << "head              " << to_string(head_from_architecture(config)) << "\n"
              << "layers            " << config.num_hidden_layers << "\n"
              << "hidden_size       " << config.hidden_size << "\n"
              << "intermediate_size " << config.intermediate_size << "\n"
              << "attention heads   " << config.num_attention_heads << " (kv " << config.num_key_value_heads
              << ", head_dim " << config.head_dim << ")\n"
              << "vocab_size        " << config.vocab_size << "\n"
              << "max_positions     " << config.max_position_embeddings << "\n"
              << "activation        " << config.hidden_act << "\n"
              << "tied embeddings   " << (config.tie_word_embeddings ? "yes" : "no") << "\n";
    if (config.type_vocab_size == 0 && config.model_type != "gpt2")
      std::cout << "rope              theta " << config.rope_theta << ", " << config.rope_scaling.type << "\n";
    std::cout << "tensors           " << ckpt.keys().size() << "\n"
              << "parameters        " << params << "\n";
    for (const auto& [name, n] : dtypes) std::cout << "  " << name << " " << n << "\n";
  });
}

}  // namespace modula::cli
