// Shared by `modula train` and `modula pretrain`: runs a config with a progress bar on a
// TTY (plain log lines otherwise), prints the summary and writes output/report.html.
#pragma once

#include "modula/train/trainer.h"

namespace modula::cli {

int run_training(const train::TrainConfig& config, bool resume);

}  // namespace modula::cli
