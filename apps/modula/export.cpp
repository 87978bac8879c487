#include "adapters.h"
#include "commands.h"
#include "modula/backbone/registry.h"
#include "modula/util/fs.h"

#include <iostream>

namespace modula::cli {

void add_export(CLI::App& app) {
  auto* cmd = app.add_subcommand("export", "Merge adapters into the base weights and write an HF model folder");
  static std::string model_dir, out;
  static std::vector<std::string> adapter_specs;
  cmd->add_option("--model,-m", model_dir, "Base model folder")->required();
  cmd->add_option("--adapter,-a", adapter_specs, "Adapter folder, optionally DIR:SCALE; repeatable")->required();
  cmd->add_option("--out,-o", out, "Output folder")->required();
  cmd->callback([] {
    auto model = load_backbone(model_dir);
    auto adapters = load_adapters(*model, adapter_specs);
    for (auto& a : adapters) a.merge();
    save_backbone(*model, out);
    for (const char* f : {"tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
                          "generation_config.json"})
      if (fs::is_file(fs::join(model_dir, f))) fs::copy_file(fs::join(model_dir, f), fs::join(out, f));
    std::cout << "merged " << adapters.size() << " adapter(s) into " << out << "\n";
  });
}

}  // namespace modula::cli
