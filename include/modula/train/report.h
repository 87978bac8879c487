// A self-contained HTML report: headings, text, preformatted blocks, tables, line charts
// (loss curves) and matrices (accuracy heat maps), drawn as inline SVG with no external
// resources, so the file opens in any browser offline. Axes cover every point with margin
// and round ticks; legends sit under the plot and wrap long names; matrix column labels wrap
// inside their cells. Used by `modula quickstart` and `modula train` / `pretrain`
// (run_report.h builds a run's report from its metrics).
//
//   Report r("modula train");
//   r.add(LineChart{"training loss", "step", "loss", {{"lora", steps, losses}}, false, 0.6});
//   r.add(Matrix{"accuracy", {"after A", "after B"}, {"A", "B"}, {{1.0, 0.1}, {0.9, 1.0}}});
//   r.write_html("build/report.html");
#pragma once

#include <cmath>
#include <cstdint>
#include <string>
#include <variant>
#include <vector>

namespace modula::train {

struct LineSeries {
  std::string name;
  std::vector<double> x, y;  // equal lengths; non-finite points are skipped
};

struct LineChart {
  std::string title;
  std::string x_label = "step";
  std::string y_label = "loss";
  std::vector<LineSeries> series;
  bool log_y = false;  // log10 axis (positive values only)
  // > 0: each series is drawn faint as given with its exponential moving average on top,
  // ema(y, smooth) (TensorBoard's smoothing slider, 0.6 is its default).
  double smooth = 0;
  bool markers = false;  // a dot at every point (sparse series such as evaluations)
};

struct Table {
  std::string title;
  std::vector<std::string> columns;
  std::vector<std::vector<std::string>> rows;  // each as wide as columns
  std::string caption;
};

// values[i][j] for row i, column j, coloured on [lo, hi]; NaN = no value (shown as "–").
struct Matrix {
  std::string title;
  std::vector<std::string> row_labels, col_labels;
  std::vector<std::vector<double>> values;
  std::string caption;
  double lo = 0.0, hi = 1.0;
  int precision = 2;
};

class Report {
 public:
  explicit Report(std::string title);
  Report& heading(const std::string& text);
  Report& paragraph(const std::string& text);
  // Preformatted text (a config, a command line) in a monospaced block.
  Report& code(const std::string& text);
  // Each throws std::invalid_argument naming the item whose shape is inconsistent.
  Report& add(LineChart chart);
  Report& add(Table table);
  Report& add(Matrix matrix);

  const std::string& title() const { return title_; }
  // The whole document.
  std::string html() const;
  // Writes html() to `path` (parent folder created); throws std::runtime_error naming it.
  void write_html(const std::string& path) const;

 private:
  struct Heading {
    std::string text;
  };
  struct Paragraph {
    std::string text;
  };
  struct Code {
    std::string text;
  };
  std::string title_;
  std::vector<std::variant<Heading, Paragraph, Code, LineChart, Table, Matrix>> blocks_;
};

// Plain-text rendering with aligned columns (for terminals).
std::string format_table(const Table& table);
std::string format_matrix(const Matrix& matrix);
// &, <, >, " escaped.
std::string html_escape(const std::string& text);
// Debiased exponential moving average: s_i = w·s_{i-1} + (1 − w)·y_i, divided by (1 − w^(i+1))
// so the start is not pulled towards 0 (TensorBoard's smoothing). w in [0, 1); non-finite
// y_i are passed through and skipped by the average.
std::vector<double> ema(const std::vector<double>& y, double weight);

}  // namespace modula::train
