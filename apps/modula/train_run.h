// Shared by `modula train` and `modula pretrain`: runs a config with a progress bar on a
// TTY (plain log lines otherwise), prints the summary and writes output/report.html.
#pragma once

#include <memory>

#include "modula/train/trainer.h"

namespace modula::cli {

// With `dist`, this process is one rank of a data-parallel run: rank 0 prints and writes
// the report, the others only train.
int run_training(const train::TrainConfig& config, bool resume, std::shared_ptr<train::Distributed> dist = nullptr);

}  // namespace modula::cli
