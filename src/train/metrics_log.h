// Internal: the run's metrics files, written by rank 0 as the run goes.
//
//   output/metrics.jsonl  one JSON object a line: every step ("type": "step"), every
//                         evaluation ("eval") and, in continual runs, each accuracy row
//                         ("continual")
//   output/metrics.csv    the step and eval lines as rows with the columns kMetricsCsvColumns
//                         (empty where a line has no such value), for spreadsheets and pandas
#pragma once

#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace modula::train::detail {

inline const std::vector<std::string>& metrics_csv_columns() {
  static const std::vector<std::string> columns = {"type",     "phase",    "step",       "global_step",  "task",
                                                   "loss",     "lr",       "grad_norm",  "tokens_per_s", "elapsed_s",
                                                   "accuracy", "macro_f1", "perplexity", "examples"};
  return columns;
}

// A metrics line as a CSV row (RFC 4180 quoting; no trailing newline); "" for lines that
// are not step or eval lines.
std::string metrics_csv_row(const nlohmann::json& line);

class MetricsLog {
 public:
  // Truncates dir/metrics.jsonl and dir/metrics.csv and writes `kept` (JSONL lines kept from
  // a resumed run) to both.
  void open(const std::string& dir, const std::vector<std::string>& kept);
  void write(const nlohmann::json& line);  // both files, flushed; nothing when not open
  void close();

 private:
  std::ofstream jsonl_, csv_;
};

}  // namespace modula::train::detail
