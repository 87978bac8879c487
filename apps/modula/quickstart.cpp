// The main job: pretrain a tiny Llama on compositional sequence tasks, then run the
// continual-learning, multi-task-interference, systematic-generalisation and mixture-of-
// LoRA-experts experiments (examples/quickstart/quickstart.h),
// print the table and write the HTML report.
#include "quickstart/quickstart.h"

#include <iostream>

#include "commands.h"
#include "flags.h"
#include "modula/util/fs.h"

namespace modula::cli {

void add_quickstart(CLI::App& app) {
  auto* cmd =
      app.add_subcommand("quickstart",
                         "Main job: pretrain a tiny model, then continual learning, multi-task interference, "
                         "systematic generalisation (Polytropon) and mixture of LoRA experts; table + HTML report");
  struct Flags {
    bool full = false, tiny = false;
    std::string out = "build/quickstart";
    uint64_t seed = 0;
    int64_t pretrain_steps = 0, finetune_steps = 0;
    int threads = 1;
    std::vector<std::string> experiments, continual, interference, generalisation, heldout, moe;
  };
  static Flags f;
  cmd->add_flag("--full", f.full, "Longer, stronger run (bigger model, more steps and tasks)");
  cmd->add_flag("--tiny", f.tiny, "A few steps of everything (a smoke test, seconds)")->excludes("--full");
  flags::output(*cmd, f.out)->capture_default_str();  // the backbone, the per-task modules, report.html
  cmd->add_option("--seed", f.seed, "Seed of initialisation and data")->capture_default_str();
  cmd->add_option("--pretrain-steps", f.pretrain_steps, "Override the pretraining steps");
  cmd->add_option("--finetune-steps", f.finetune_steps, "Override the fine-tuning steps per task");
  cmd->add_option("--experiments", f.experiments, "Subset of: continual interference generalisation moe");
  cmd->add_option("--continual-tasks", f.continual, "Task sequence for (a), e.g. reverse shift sort+shift");
  cmd->add_option("--interference-tasks", f.interference, "Conflicting tasks for (b)");
  cmd->add_option("--generalisation-tasks", f.generalisation, "Training compositions for (c)");
  cmd->add_option("--heldout-tasks", f.heldout, "Held-out compositions of seen skills for (c)");
  cmd->add_option("--moe-tasks", f.moe, "Tasks for (d) (markers in the text)");
  // One thread: the model is tiny, so threading costs more than it gains (and oversubscribes
  // a loaded machine badly).
  flags::threads(*cmd, f.threads)->capture_default_str();
  cmd->callback([] {
    if (f.full && f.tiny) throw std::invalid_argument("choose one of --full and --tiny");
    auto o = f.full   ? train::QuickstartOptions::full()
             : f.tiny ? train::QuickstartOptions::tiny()
                      : train::QuickstartOptions();
    o.output(f.out).seed(f.seed);
    if (f.pretrain_steps) o.pretrain_steps(f.pretrain_steps);
    if (f.finetune_steps) o.finetune_steps(f.finetune_steps);
    if (!f.experiments.empty()) o.experiments(f.experiments);
    if (!f.continual.empty()) o.continual_tasks(f.continual);
    if (!f.interference.empty()) o.interference_tasks(f.interference);
    if (!f.generalisation.empty()) o.generalisation_tasks(f.generalisation);
    if (!f.heldout.empty()) o.heldout_tasks(f.heldout);
    if (!f.moe.empty()) o.moe_tasks(f.moe);
    flags::apply_threads(f.threads);
    std::cout << "modula quickstart"
              << (f.full   ? " --full"
                  : f.tiny ? " --tiny"
                           : "")
              << " (seed " << f.seed << ", " << torch::get_num_threads() << " threads)\n";
    auto result = train::run_quickstart(o, [](const std::string& line) { std::cout << line << "\n" << std::flush; });
    std::cout << "\n" << train::format_table(result.summary_table());
    for (const auto& e : result.experiments)
      for (const auto& m : result.accuracy_matrices(e)) std::cout << "\n" << train::format_matrix(m);
    if (!result.output.empty())
      std::cout << "\nreport: " << fs::join(result.output, "report.html")
                << "  (modules: " << fs::join(result.output, "modules")
                << ", backbone: " << fs::join(result.output, "backbone") << ")\n";
    std::cout << "total " << static_cast<int>(result.seconds) << " s\n";
  });
}

}  // namespace modula::cli
