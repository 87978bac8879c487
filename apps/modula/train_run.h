// Shared by `modula train` and `modula pretrain`: runs a config with a progress bar on a
// TTY (plain log lines otherwise), prints the summary and writes output/report.html.
#pragma once

#include <memory>

#include "modula/train/trainer.h"

namespace modula::cli {

// With `dist`, this process is one rank of a data-parallel run: rank 0 prints and writes
// the report, the others only train.
// `command` ("train", "pretrain") titles the report.
int run_training(const train::TrainConfig& config, bool resume, std::shared_ptr<train::Distributed> dist = nullptr,
                 const std::string& command = "train");

// A fresh run must not land in a folder holding another (metrics.jsonl or checkpoints/):
// throws naming the folder and --overwrite unless `overwrite`.
void check_fresh_output(const std::string& output, bool overwrite);
// The output folder a run will write: `output` when given, else the config's.
std::string resolved_output(const std::string& config_path, const std::string& output);

}  // namespace modula::cli
