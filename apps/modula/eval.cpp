// modula eval: loss, perplexity, accuracy and macro-F1 of a run, or of a model with
// modules, on a data file (or a run's own eval files).
#include <cmath>
#include <fstream>
#include <iostream>
#include <sstream>

#include "commands.h"
#include "eval_setup.h"
#include "flags.h"
#include "modula/train/data.h"
#include "modula/train/report.h"
#include "modula/util/error.h"

namespace modula::cli {
namespace {

constexpr std::string_view kEvalTag = "eval";

std::string fmt_metric(double v) {
  if (!std::isfinite(v)) return "–";
  std::ostringstream os;
  os.precision(4);
  os << std::fixed << v;
  return os.str();
}

}  // namespace

void add_eval_flags(CLI::App& cmd, EvalFlags& f) {
  cmd.add_option("run", f.run, "A run: the output folder of `modula train`, or its config file");
  cmd.add_option("--run", f.run, "Same as the positional RUN");
  flags::model(cmd, f.model)->description("Model folder (HF layout), when there is no run");
  flags::adapters(cmd, f.adapters);
  cmd.add_option("--compose", f.compose,
                 "Composition spec over --module names, or a trained composition folder (docs/composition.md)");
  cmd.add_option("--module", f.modules, "NAME=DIR: a module folder the --compose spec names; repeatable");
  cmd.add_option("--heads", f.heads, "heads.safetensors of a run (labels from heads.json beside it)");
  cmd.add_option("--tokenizer,-t", f.tokenizer, "Tokenizer file or folder (default: the model folder)");
  cmd.add_option("--data,-d", f.data, "Records: .jsonl / .json / .csv / .tsv (default with a run: its eval files)");
  cmd.add_option("--task", f.task,
                 "Without a run: the task type (causal_lm, masked_lm, sequence_classification, "
                 "token_classification); with one: a task's name or type (default: its only task)");
  cmd.add_option("--text-field", f.fields.text_field)->capture_default_str();
  cmd.add_option("--text-pair-field", f.fields.text_pair_field, "Second segment (sequence classification)");
  cmd.add_option("--label-field", f.fields.label_field)->capture_default_str();
  cmd.add_option("--prompt-field", f.fields.prompt_field)->capture_default_str();
  cmd.add_option("--completion-field", f.fields.completion_field)->capture_default_str();
  cmd.add_option("--tokens-field", f.fields.tokens_field)->capture_default_str();
  cmd.add_option("--tags-field", f.fields.tags_field)->capture_default_str();
  cmd.add_option("--labels", f.labels, "Label names in the head's order (default: the heads.json beside --heads)")
      ->delimiter(',');
  cmd.add_option("--max-length", f.fields.max_length, "Tokens per record")->capture_default_str();
  cmd.add_option("--batch-size", f.batch_size, "Records per forward pass (default: the run's eval.batch_size, or 16)");
  cmd.add_option("--seed", f.seed, "Seed of the masked-LM masks without a run")->capture_default_str();
  flags::device(cmd, f.device);
  flags::threads(cmd, f.threads);
}

std::pair<train::EvalSetup, std::string> eval_setup(const EvalFlags& f, const CLI::App& cmd) {
  train::EvalSetup s;
  s.run = f.run, s.model = f.model, s.tokenizer = f.tokenizer, s.adapters = f.adapters, s.compose = f.compose;
  s.heads = f.heads, s.device = f.device, s.batch_size = f.batch_size, s.seed = f.seed;
  for (const auto& m : f.modules) {
    auto eq = m.find('=');
    if (eq == std::string::npos || eq == 0) throw_error(kEvalTag, "--module '" + m + "': expected NAME=DIR");
    s.modules[m.substr(0, eq)] = m.substr(eq + 1);
  }
  if (!f.run.empty()) {
    for (const char* flag : {"--model", "--adapter", "--compose", "--module", "--heads", "--tokenizer", "--labels",
                             "--text-field", "--text-pair-field", "--label-field", "--prompt-field",
                             "--completion-field", "--tokens-field", "--tags-field", "--max-length"})
      if (cmd.count(flag))
        throw_error(kEvalTag, std::string(flag) + " applies without a run; a run (" + f.run +
                                  ") brings its model, modules, heads and field names");
    return {s, f.task};
  }
  if (f.model.empty()) throw_error(kEvalTag, "give a run (its output folder or config file) or --model DIR");
  if (f.task.empty())
    throw_error(kEvalTag,
                "--task is required without a run (causal_lm, masked_lm, sequence_classification, "
                "token_classification)");
  train::TaskConfig t = f.fields;
  try {
    t.type = train::task_type_from_string(f.task);
  } catch (const ConfigError& e) {
    throw_error(kEvalTag, std::string("--task: ") + e.what());
  }
  t.name = f.task;
  t.labels = f.labels;
  s.tasks = {t};
  return {s, f.task};
}

void warn_untrained(const train::Evaluator& ev) {
  for (const auto& part : ev.untrained())
    std::cerr << "warning: [compose] " << part << ": evaluating with it untrained\n";
}

void add_eval(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "eval", "Evaluate a run, or a model with modules, on a data file: loss, perplexity, accuracy, macro-F1");
  static EvalFlags f;
  static std::string json_out;
  add_eval_flags(*cmd, f);
  cmd->add_option("--json", json_out, "Also write the results as JSON to this file ('-' = stdout only JSON)");
  cmd->callback([cmd] {
    flags::apply_threads(f.threads);
    auto [setup, task] = eval_setup(f, *cmd);
    train::Evaluator ev(setup);
    warn_untrained(ev);
    std::vector<train::EvalResult> results;
    if (!f.data.empty()) {
      results.push_back(ev.evaluate(task, train::load_records(f.data), f.data));
    } else {
      if (setup.run.empty()) throw_error(kEvalTag, "--data is required without a run");
      const std::string only = task.empty() ? "" : ev.task(task).name;
      for (const auto& name : ev.task_names()) {
        if (!only.empty() && name != only) continue;
        const auto& t = ev.task(name);
        if (t.eval.empty()) throw_error(kEvalTag, "task '" + name + "' of the run has no eval file: pass --data");
        results.push_back(ev.evaluate(name, train::load_records(t.eval), t.eval));
      }
    }
    nlohmann::json j = {{"source", setup.run.empty() ? setup.model : setup.run},
                        {"data", f.data},
                        {"results", nlohmann::json::array()}};
    for (const auto& r : results) j["results"].push_back(r.to_json());
    if (json_out == "-") {
      std::cout << j.dump(2) << "\n";
      return;
    }
    train::Table table{"", {"task", "type", "examples", "loss", "accuracy", "macro_f1", "perplexity"}, {}, ""};
    for (const auto& r : results) {
      auto get = [&](const char* k) { return r.metrics.count(k) ? fmt_metric(r.metrics.at(k)) : std::string("–"); };
      table.rows.push_back({r.task, train::to_string(r.type), std::to_string(r.examples), get("loss"), get("accuracy"),
                            get("macro_f1"), get("perplexity")});
    }
    std::cout << train::format_table(table);
    if (!json_out.empty()) {
      std::ofstream out(json_out);
      if (!out) throw_error(kEvalTag, "cannot write " + json_out);
      out << j.dump(2) << "\n";
      std::cout << "wrote " << json_out << "\n";
    }
  });
}

}  // namespace modula::cli
