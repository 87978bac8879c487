// modula pretrain CONFIG: a causal or masked LM from scratch (random init) into an HF folder.
#include <iostream>

#include "commands.h"
#include "flags.h"
#include "modula/util/fs.h"
#include "train_run.h"

namespace modula::cli {

void add_pretrain(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "pretrain",
      "Pretrain a causal/masked LM from random init; writes OUTPUT/model (config.json + model.safetensors)");
  static std::string config_path, output, device;
  static bool resume = false, overwrite = false;
  static int threads = 0;
  cmd->add_option("config", config_path,
                  "Run config: model = a config.json (or folder), tasks = causal_lm or masked_lm")
      ->required();
  flags::output(*cmd, output);
  cmd->add_flag("--resume", resume, "Continue from the newest complete checkpoint");
  flags::overwrite(*cmd, overwrite)->excludes("--resume");
  flags::threads(*cmd, threads);
  flags::device(*cmd, device);
  cmd->callback([] {
    auto config = train::load_train_config(config_path);
    if (!output.empty()) config.output = output;
    if (!device.empty()) config.device = device;
    flags::apply_threads(threads);
    if (!resume) check_fresh_output(config.output, overwrite);
    config.init = "random";
    config.train_backbone = true;
    config.save_model = true;
    if (!config.modules.empty())
      throw_error<ConfigError>("train", config_path + ": pretraining trains the whole model; remove 'modules'");
    for (const auto& t : config.tasks)
      if (t.type != train::TaskType::CausalLM && t.type != train::TaskType::MaskedLM)
        throw_error<ConfigError>("train", config_path + ": pretraining takes causal_lm or masked_lm tasks, task '" +
                                              t.name + "' is " + train::to_string(t.type));
    // The tokenizer belongs with the model folder: copied (atomically) before the run, so a
    // run that finished (result.json written) never leaves a model folder without it.
    std::string tok = config.tokenizer.empty() ? (fs::is_dir(config.model) ? config.model : fs::parent(config.model))
                                               : config.tokenizer;
    if (fs::is_dir(tok)) tok = fs::join(tok, "tokenizer.json");
    if (fs::is_file(tok) && fs::extension(tok) == ".json") {
      fs::make_dirs(fs::join(config.output, "model"));
      fs::copy_file(tok, fs::join(config.output, "model/tokenizer.json"));
    }
    run_training(config, resume, nullptr, "pretrain");
    std::cout << "model written to " << fs::join(config.output, "model") << "\n";
  });
}

}  // namespace modula::cli
