// What `modula eval` and `modula predict` share: the flags that say what to load (a run, or
// a model with modules and a task) and which data to read, turned into an EvalSetup.
#pragma once

#include <CLI/CLI.hpp>
#include <cstdint>
#include <string>
#include <vector>

#include "modula/train/evaluate.h"

namespace modula::cli {

struct EvalFlags {
  std::string run, model, tokenizer, compose, heads, device, data, task;
  std::vector<std::string> adapters, modules, labels;
  train::TaskConfig fields;  // field names and max_length of a task given without a run
  int64_t batch_size = 0;
  uint64_t seed = 0;
  int threads = 0;
};

void add_eval_flags(CLI::App& cmd, EvalFlags& f);

// The setup, and the task to use: a run's task name or type ("" = its only task), or, without
// a run, the task of type --task built from the field flags. Throws naming the bad flag.
std::pair<train::EvalSetup, std::string> eval_setup(const EvalFlags& f, const CLI::App& cmd);

// One "warning: [compose] ..." line on stderr per part of --compose that is untrained.
void warn_untrained(const train::Evaluator& ev);

}  // namespace modula::cli
