// modula moefy / modula upcycle: a model's feed-forward blocks as a MODULA_MOE_FFN module
// folder (MoEfication, Zhang et al. 2022; sparse upcycling, Komatsuzaki et al. 2023) that
// `modula generate --adapter`, `modula train` (modules: - path:) and load_module read.
#include <torch/torch.h>

#include <iostream>

#include "commands.h"
#include "flags.h"
#include "modula/backbone/registry.h"
#include "modula/composition/registry.h"

namespace modula::cli {
namespace {

struct MoeArgs {
  std::string model_dir, out;
  int64_t experts = 0, top_k = 2, kmeans_iterations = 20;
  std::vector<int64_t> layers;
  uint64_t seed = 0;
};

CLI::App* add_common(CLI::App& app, const std::string& name, const std::string& help, MoeArgs& a) {
  auto* cmd = app.add_subcommand(name, help);
  flags::model(*cmd, a.model_dir)->required();
  cmd->add_option("--experts,-e", a.experts, "Experts per feed-forward block")->required();
  cmd->add_option("--top-k,-k", a.top_k, "Experts computed per token")->capture_default_str();
  cmd->add_option("--layers", a.layers, "Layer indices, comma-separated (default: every layer)")->delimiter(',');
  flags::output(*cmd, a.out)->required();
  return cmd;
}

void write_moe_folder(const MoeArgs& a, const std::string& init) {
  auto model = load_backbone(a.model_dir);
  nlohmann::json config = {{"peft_type", "MODULA_MOE_FFN"},
                           {"init", init},
                           {"num_experts", a.experts},
                           {"num_experts_per_tok", a.top_k},
                           {"layers", a.layers}};
  if (init == "moefy") config["seed"] = a.seed, config["kmeans_iterations"] = a.kmeans_iterations;
  ModuleEnv env;
  env.name = "moe";
  auto module = build_module(*model, config, env);
  save_module(module, a.out);
  std::cout << init << ": " << a.experts << " experts, top-" << a.top_k << " per token, " << module.num_trainable()
            << " trainable parameters -> " << a.out << "\n";
}

}  // namespace

void add_moefy(CLI::App& app) {
  static MoeArgs a;
  auto* cmd = add_common(app, "moefy",
                         "Split each dense FFN into experts by k-means of its neurons, with a top-k router "
                         "(MoEfication); writes a MODULA_MOE_FFN folder",
                         a);
  cmd->add_option("--seed", a.seed, "Seed of the k-means initialisation")->capture_default_str();
  cmd->add_option("--kmeans-iterations", a.kmeans_iterations, "Balanced k-means steps")->capture_default_str();
  cmd->callback([] { write_moe_folder(a, "moefy"); });
}

void add_upcycle(CLI::App& app) {
  static MoeArgs a;
  auto* cmd = add_common(app, "upcycle",
                         "Turn each dense FFN into E copies behind a fresh top-k router (sparse upcycling); "
                         "writes a MODULA_MOE_FFN folder",
                         a);
  cmd->add_option("--seed", a.seed, "Seed of the fresh router")->capture_default_str();
  cmd->callback([] {
    torch::manual_seed(a.seed);  // the router's initialisation
    write_moe_folder(a, "upcycle");
  });
}

}  // namespace modula::cli
