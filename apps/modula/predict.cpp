// modula predict: labels or tags with probabilities (classification heads), completions
// (causal LMs), one JSON object per record.
#include <fstream>
#include <iostream>

#include "commands.h"
#include "eval_setup.h"
#include "flags.h"
#include "modula/train/data.h"
#include "modula/util/error.h"

namespace modula::cli {

void add_predict(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "predict", "Predict labels / tags (classification heads) or completions (causal LM) for a data file, as JSONL");
  static EvalFlags f;
  static std::string out_path;
  static train::PredictOptions po;
  add_eval_flags(*cmd, f);
  flags::output(*cmd, out_path)->description("Output JSONL file (default: stdout)");
  cmd->add_option("--max-new-tokens,-n", po.generate.max_new_tokens, "Causal LM: tokens to generate")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  cmd->add_option("--temperature", po.generate.temperature, "Causal LM: 0 = greedy")
      ->check(flags::finite_range(0, 1e6))
      ->capture_default_str();
  cmd->add_option("--top-k", po.generate.top_k, "Causal LM: keep the k most likely tokens (0 = off)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  cmd->add_option("--top-p", po.generate.top_p, "Causal LM: nucleus mass (1 = off)")
      ->check(flags::finite_range(0, 1))
      ->capture_default_str();
  cmd->add_option("--sample-seed", po.generate.seed, "Causal LM: sampling seed")->capture_default_str();
  cmd->callback([cmd] {
    flags::apply_threads(f.threads);
    if (f.data.empty()) throw_error("predict", "--data is required");
    auto [setup, task] = eval_setup(f, *cmd);
    train::Evaluator ev(setup);
    warn_untrained(ev);
    auto rows = ev.predict(task, train::load_records(f.data), f.data, po);
    std::ofstream file;
    if (!out_path.empty()) {
      file.open(out_path);
      if (!file) throw_error("predict", "cannot write " + out_path);
    }
    std::ostream& out = out_path.empty() ? std::cout : file;
    for (const auto& r : rows) out << r.dump() << "\n";
    if (!out_path.empty())
      std::cout << "wrote " << rows.size() << " predictions of task '" << ev.task(task).name << "' to " << out_path
                << "\n";
  });
}

}  // namespace modula::cli
