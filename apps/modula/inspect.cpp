#include "commands.h"
#include "modula/backbone/registry.h"
#include "modula/io/safetensors.h"

#include <iostream>
#include <map>

namespace modula::cli {

void add_inspect(CLI::App& app) {
  auto* cmd = app.add_subcommand("inspect", "Show architecture, parameter count, dtypes and layers of a model folder");
  static std::string dir;
  cmd->add_option("dir", dir, "Model folder (config.json + safetensors)")->required();
  cmd->callback([] {
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
