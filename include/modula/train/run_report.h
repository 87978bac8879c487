// The HTML report of one training run (`modula train`, `modula pretrain`), built from what the
// run wrote (output/metrics.jsonl, every step) and its result:
//   - training loss per task at every step, the raw line faint with its moving average on top;
//   - eval curves per task (loss, accuracy, macro-F1, perplexity vs step) and the final metrics;
//   - for continual runs the task × time accuracy matrix (and the full fine-tuning baseline's);
//   - throughput (tokens/s) and wall time per phase, parameters, steps;
//   - the resolved config (defaults filled in, paths absolute).
//
//   auto result = trainer.run(callbacks);
//   RunReportOptions o;
//   o.command = "pretrain";                  // titled "modula pretrain · <output folder name>"
//   run_report(config, result, o).write_html(result.output + "/report.html");
#pragma once

#include <cmath>
#include <string>

#include "modula/train/report.h"
#include "modula/train/trainer.h"

namespace modula::train {

struct RunReportOptions {
  std::string command = "train";  // the title names it: "modula <command> · <output folder name>"
  std::string title;              // instead of that title
  double wall_s = NAN;            // the whole command's seconds; NaN: the phases' sum from the metrics
  double smooth = 0.6;            // EMA weight of the training-loss curves (LineChart::smooth)
};

// Reads result.output/metrics.jsonl (no curves when it is missing). The library never
// prints: the caller writes the report.
Report run_report(const TrainConfig& config, const TrainResult& result, const RunReportOptions& options = {});

// A continual run's accuracy as task × time: row j = task j, column t = "after <task t>"
// (ContinualResult::accuracy is [time][task]); the caption holds the average accuracy and
// forgetting.
Matrix continual_matrix(const std::string& title, const ContinualResult& c);

}  // namespace modula::train
