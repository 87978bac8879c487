// Flags that several subcommands take, declared once so that their names, aliases and help
// agree everywhere (STYLE.md 12, llama.cpp's common_arg idea). Each adds the flag to `cmd`
// and returns the option for per-command settings (->required(), ->capture_default_str()).
//
//   flags::model(*cmd, model_dir)->required();
//   flags::adapters(*cmd, adapter_specs);
//   flags::threads(*cmd, threads);   ...   flags::apply_threads(threads);
#pragma once

#include <torch/utils.h>

#include <CLI/CLI.hpp>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

namespace modula::cli::flags {

inline CLI::Option* model(CLI::App& cmd, std::string& dir) {
  return cmd.add_option("-m,--model", dir, "Model folder (HF layout: config.json + *.safetensors)");
}

// Module folders in the order given; SCALE multiplies the module's strength (1 = as trained).
inline CLI::Option* adapters(CLI::App& cmd, std::vector<std::string>& specs) {
  return cmd.add_option("-a,--adapter", specs, "Module folder (PEFT or modula format), DIR or DIR:SCALE; repeatable");
}

// --task as a task type (what the data holds and which head runs).
inline CLI::Option* task_type(CLI::App& cmd, std::string& type) {
  return cmd
      .add_option("--task", type, "Task type: causal_lm, masked_lm, sequence_classification or token_classification")
      ->check(CLI::IsMember({"causal_lm", "masked_lm", "sequence_classification", "token_classification"}));
}

// --task as a task id: the row that task-routed modules read.
inline CLI::Option* task_id(CLI::App& cmd, int64_t& id) {
  return cmd
      .add_option("--task", id, "Task id that task-routed modules read (POLY, MODULA_HYPER_LORA: the task's row)")
      ->check(CLI::NonNegativeNumber);
}

// "--out" stays an alias: it was the flag's name in merge, export, moefy and quickstart.
inline CLI::Option* output(CLI::App& cmd, std::string& dir) {
  return cmd.add_option("-o,--output,--out", dir, "Output folder (overrides the one a config or recipe names)");
}

// 0 (the default) leaves libtorch's choice; a value given must be at least 1.
inline CLI::Option* threads(CLI::App& cmd, int& n) {
  return cmd.add_option("--threads", n, "Intra-op CPU threads, at least 1 (default: libtorch's choice)")
      ->check(CLI::Range(1, 1 << 16));
}

inline CLI::Option* device(CLI::App& cmd, std::string& device) {
  return cmd.add_option("--device", device, "Device: cpu, cuda or cuda:N (overrides the one a config names)");
}

// train / pretrain: writing a fresh run into a folder that holds one needs this flag.
inline CLI::Option* overwrite(CLI::App& cmd, bool& on) {
  return cmd.add_flag("--overwrite", on,
                      "Write into an output folder that already holds a run (metrics.jsonl or checkpoints/)");
}

// A finite number in [lo, hi] (CLI::Range lets NaN through: every comparison with it is false).
inline CLI::Validator finite_range(double lo, double hi) {
  return CLI::Validator(
      [lo, hi](std::string& s) -> std::string {
        double v = 0;
        if (!CLI::detail::lexical_cast(s, v) || !std::isfinite(v) || v < lo || v > hi)
          return "value " + s + " is not a finite number in [" + CLI::detail::to_string(lo) + ", " +
                 CLI::detail::to_string(hi) + "]";
        return {};
      },
      "FINITE in [" + CLI::detail::to_string(lo) + ", " + CLI::detail::to_string(hi) + "]");
}

// Token ids: each a non-negative integer (an empty entry would silently become id 0).
inline CLI::Validator token_id() {
  return CLI::Validator(
      [](std::string& s) -> std::string {
        int64_t v = 0;
        if (s.empty()) return "empty token id";
        if (!CLI::detail::lexical_cast(s, v) || v < 0) return "token id '" + s + "' is not a non-negative integer";
        return {};
      },
      "ID >= 0");
}

// torch::set_num_threads(n) when n ≥ 1.
inline void apply_threads(int n) {
  if (n > 0) torch::set_num_threads(n);
}

}  // namespace modula::cli::flags
