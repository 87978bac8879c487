#include <iostream>

#include "commands.h"
#include "flags.h"
#include "modula/backbone/registry.h"
#include "modula/composition/registry.h"
#include "modula/modules/bitfit.h"
#include "modula/modules/hypernetwork.h"
#include "modula/modules/sparse_ft.h"
#include "modula/util/fs.h"

namespace modula::cli {

void add_export(CLI::App& app) {
  auto* cmd = app.add_subcommand("export", "Merge adapters into the base weights and write an HF model folder");
  static std::string model_dir, out;
  static std::vector<std::string> adapter_specs;
  static int64_t task = 0;
  flags::model(*cmd, model_dir)->required();
  flags::adapters(*cmd, adapter_specs)->required();
  flags::output(*cmd, out)->required();
  flags::task_id(*cmd, task)->capture_default_str();
  cmd->callback([] {
    auto model = load_backbone(model_dir);
    auto modules = load_module_folders(*model, adapter_specs, task);
    for (auto& a : modules) a.merge();
    // The side files first and config.json (written last by save_backbone) as the commit
    // marker: a folder cut off by a kill has no config.json, so every loader rejects it.
    fs::make_dirs(out);
    for (const char* f : {"tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
                          "generation_config.json"})
      if (fs::is_file(fs::join(model_dir, f))) fs::copy_file(fs::join(model_dir, f), fs::join(out, f));
    save_backbone(*model, out);
    std::cout << "merged " << modules.size() << " module folder(s) into " << out << "\n";
  });
}

}  // namespace modula::cli
