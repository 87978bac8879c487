// modula merge RECIPE: full-model merge from a YAML/JSON recipe (docs/merging.md).
// modula merge-adapters: PEFT add_weighted_adapter over LoRA folders on one base model.
#include <iostream>

#include "commands.h"
#include "flags.h"
#include "modula/backbone/registry.h"
#include "modula/composition/registry.h"
#include "modula/merge/lora_merge.h"
#include "modula/merge/merge_recipe.h"

namespace modula::cli {

void add_merge(CLI::App& app) {
  auto* cmd = app.add_subcommand("merge",
                                 "Merge full models from a recipe (linear, task_arithmetic, ties, "
                                 "dare_linear, dare_ties, slerp, model_stock)");
  static std::string recipe_path, out;
  cmd->add_option("recipe", recipe_path, "Recipe file (.yaml, .yml or .json)")->required();
  flags::output(*cmd, out);
  cmd->callback([] {
    auto recipe = load_recipe(recipe_path);
    auto report = run_merge(recipe, out);
    std::cout << "merged " << recipe.models.size() << " model(s) with " << recipe.options.method() << ": "
              << report.tensors << " tensors, " << report.parameters << " parameters -> " << report.output << "\n";
    if (!report.copied_files.empty()) {
      std::cout << "copied";
      for (const auto& f : report.copied_files) std::cout << " " << f;
      std::cout << "\n";
    }
  });
}

void add_merge_adapters(CLI::App& app) {
  auto* cmd = app.add_subcommand("merge-adapters", "Merge LoRA adapters into one (PEFT add_weighted_adapter)");
  static std::string model_dir, out, combination = "svd", sign = "total";
  static std::vector<std::string> adapters;
  static std::vector<double> weights;
  static double density = -1, svd_clamp = -1;
  static int64_t svd_rank = 0;
  static uint64_t seed = 0;
  flags::model(*cmd, model_dir)->required();
  flags::adapters(*cmd, adapters)->required();
  cmd->add_option("--weights,-w", weights, "One weight per adapter")->required()->delimiter(',');
  cmd->add_option("--combination,-c", combination,
                  "linear, cat, svd, ties, dare_linear, dare_ties, "
                  "magnitude_prune, or a *_svd variant")
      ->capture_default_str();
  cmd->add_option("--density", density, "Fraction kept by the pruning types, in [0, 1]");
  cmd->add_option("--majority-sign", sign, "total or frequency (ties types)")->capture_default_str();
  cmd->add_option("--svd-rank", svd_rank, "Rank of the svd types (0: the largest input rank)")->capture_default_str();
  cmd->add_option("--svd-clamp", svd_clamp, "Quantile in (0, 1] clamping the svd factors");
  cmd->add_option("--seed", seed, "Seed of DARE's masks")->capture_default_str();
  flags::output(*cmd, out)->required();
  cmd->callback([] {
    auto model = load_backbone(model_dir);
    auto inputs = load_module_folders(*model, adapters);  // a0, a1, ... (DIR:SCALE scales one)
    auto o = LoraMergeOptions(weights)
                 .combination_type(combination)
                 .majority_sign_method(sign)
                 .svd_rank(svd_rank)
                 .seed(seed);
    if (density >= 0) o.density(density);
    if (svd_clamp >= 0) o.svd_clamp(svd_clamp);
    auto merged = merge_lora_adapters(*model, inputs, o, "merged");
    if (merged.config.value("base_model_name_or_path", nlohmann::json()).is_null())
      merged.config["base_model_name_or_path"] = model_dir;
    save_adapter(merged, out);
    std::cout << "merged " << inputs.size() << " LoRA adapter(s) with " << combination
              << " (r=" << merged.config["r"].get<int64_t>() << ", " << merged.modules.size() << " sites) -> " << out
              << "\n";
  });
}

}  // namespace modula::cli
