// HTML report with inline SVG charts (svg_plot.cpp draws them); plain-text tables for terminals.
#include "modula/train/report.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <stdexcept>

#include "modula/util/error.h"
#include "modula/util/fs.h"
#include "svg_plot.h"

namespace modula::train {
namespace {

constexpr std::string_view kReportTag = "report";

using svg::fixed;

// Numbers (and the "–" of a missing one) align right, text left.
bool numeric_cell(const std::string& s) {
  if (s == "–" || s == "-") return true;
  char* end = nullptr;
  std::strtod(s.c_str(), &end);
  return !s.empty() && end != s.c_str() && (*end == '\0' || *end == ' ' || *end == '%');
}

std::string html_table(const Table& t) {
  std::ostringstream o;
  // The title above the table, not a <caption>: a caption wraps to the table's width.
  if (!t.title.empty()) o << "<p class=\"table-title\">" << html_escape(t.title) << "</p>\n";
  std::vector<bool> right(t.columns.size(), true);  // a column of numbers aligns right, header too
  for (const auto& r : t.rows)
    for (size_t j = 0; j < r.size() && j < right.size(); ++j) right[j] = right[j] && numeric_cell(r[j]);
  o << "<table>\n<tr>";
  for (size_t j = 0; j < t.columns.size(); ++j)
    o << "<th" << (right[j] ? " class=\"num\"" : "") << ">" << html_escape(t.columns[j]) << "</th>";
  o << "</tr>\n";
  for (const auto& r : t.rows) {
    o << "<tr>";
    for (size_t j = 0; j < r.size(); ++j)
      o << "<td" << (j < right.size() && right[j] ? " class=\"num\"" : "") << ">" << html_escape(r[j]) << "</td>";
    o << "</tr>\n";
  }
  o << "</table>\n";
  if (!t.caption.empty()) o << "<p class=\"note\">" << html_escape(t.caption) << "</p>\n";
  return o.str();
}

}  // namespace

std::string html_escape(const std::string& text) {
  std::string out;
  for (char ch : text) {
    switch (ch) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      default:
        out += ch;
    }
  }
  return out;
}

Report::Report(std::string title) : title_(std::move(title)) {}

Report& Report::heading(const std::string& text) {
  blocks_.emplace_back(Heading{text});
  return *this;
}

Report& Report::paragraph(const std::string& text) {
  blocks_.emplace_back(Paragraph{text});
  return *this;
}

Report& Report::code(const std::string& text) {
  blocks_.emplace_back(Code{text});
  return *this;
}

std::vector<double> ema(const std::vector<double>& y, double weight) {
  if (!(weight >= 0 && weight < 1)) throw_error(kReportTag, "ema weight must be in [0, 1), got " + svg::num(weight));
  std::vector<double> out(y.size());
  double s = 0, norm = 0;
  for (size_t i = 0; i < y.size(); ++i) {
    if (!std::isfinite(y[i])) {
      out[i] = y[i];
      continue;
    }
    s = weight * s + (1 - weight) * y[i];
    norm = weight * norm + (1 - weight);  // = 1 − w^(n) after n finite points
    out[i] = s / norm;
  }
  return out;
}

Report& Report::add(LineChart chart) {
  for (const auto& s : chart.series)
    if (s.x.size() != s.y.size())
      throw_error(kReportTag, "chart '" + chart.title + "' series '" + s.name + "' has " + std::to_string(s.x.size()) +
                                  " x values but " + std::to_string(s.y.size()) + " y values");
  if (!(chart.smooth >= 0 && chart.smooth < 1))
    throw_error(kReportTag, "chart '" + chart.title + "' smooth must be in [0, 1), got " + svg::num(chart.smooth));
  blocks_.emplace_back(std::move(chart));
  return *this;
}

Report& Report::add(Table table) {
  for (size_t i = 0; i < table.rows.size(); ++i)
    if (table.rows[i].size() != table.columns.size())
      throw_error(kReportTag, "table '" + table.title + "' row " + std::to_string(i) + " has " +
                                  std::to_string(table.rows[i].size()) + " cells for " +
                                  std::to_string(table.columns.size()) + " columns");
  blocks_.emplace_back(std::move(table));
  return *this;
}

Report& Report::add(Matrix matrix) {
  if (matrix.values.size() != matrix.row_labels.size())
    throw_error(kReportTag, "matrix '" + matrix.title + "' has " + std::to_string(matrix.values.size()) + " rows for " +
                                std::to_string(matrix.row_labels.size()) + " row labels");
  for (size_t i = 0; i < matrix.values.size(); ++i)
    if (matrix.values[i].size() != matrix.col_labels.size())
      throw_error(kReportTag, "matrix '" + matrix.title + "' row " + std::to_string(i) + " has " +
                                  std::to_string(matrix.values[i].size()) + " values for " +
                                  std::to_string(matrix.col_labels.size()) + " column labels");
  if (!(matrix.hi > matrix.lo)) throw_error(kReportTag, "matrix '" + matrix.title + "' needs hi > lo");
  blocks_.emplace_back(std::move(matrix));
  return *this;
}

std::string Report::html() const {
  std::ostringstream o;
  o << "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>" << html_escape(title_)
    << "</title>\n<style>\n"
       "body{font-family:sans-serif;max-width:960px;margin:2em auto;padding:0 1em;color:#222}\n"
       "table{border-collapse:collapse;margin:0 0 1em}.table-title{font-weight:bold;margin:1em 0 4px}\n"
       "th,td{border:1px solid #ccc;padding:4px 10px;text-align:left}th{background:#f4f4f4}\n"
       ".num{text-align:right;font-variant-numeric:tabular-nums}.note{color:#555;font-size:90%}\n"
       "svg{display:block;margin:1em 0;max-width:100%;height:auto}.wide{overflow-x:auto}\n"
       "pre{background:#f6f6f6;border:1px solid #ddd;padding:8px 12px;font-size:85%;overflow-x:auto}\n"
       "</style>\n</head>\n<body>\n<h1>"
    << html_escape(title_) << "</h1>\n";
  for (const auto& block : blocks_) {
    if (auto* h = std::get_if<Heading>(&block))
      o << "<h2>" << html_escape(h->text) << "</h2>\n";
    else if (auto* p = std::get_if<Paragraph>(&block))
      o << "<p>" << html_escape(p->text) << "</p>\n";
    else if (auto* k = std::get_if<Code>(&block))
      o << "<pre>" << html_escape(k->text) << "</pre>\n";
    else if (auto* c = std::get_if<LineChart>(&block))
      o << svg::line_chart(*c);
    else if (auto* t = std::get_if<Table>(&block))
      o << "<div class=\"wide\">" << html_table(*t) << "</div>\n";
    else if (auto* m = std::get_if<Matrix>(&block)) {
      o << svg::matrix(*m);
      if (!m->caption.empty()) o << "<p class=\"note\">" << html_escape(m->caption) << "</p>\n";
    }
  }
  o << "</body>\n</html>\n";
  return o.str();
}

void Report::write_html(const std::string& path) const {
  std::string dir = fs::parent(path);
  if (!dir.empty() && dir != ".") fs::make_dirs(dir);
  fs::write_file(path, html());
}

std::string format_table(const Table& t) {
  std::vector<size_t> width(t.columns.size(), 0);
  auto measure = [](const std::string& s) {  // display width: count UTF-8 lead bytes
    size_t n = 0;
    for (unsigned char ch : s) n += (ch & 0xC0) != 0x80;
    return n;
  };
  for (size_t j = 0; j < t.columns.size(); ++j) width[j] = measure(t.columns[j]);
  for (const auto& r : t.rows)
    for (size_t j = 0; j < r.size() && j < width.size(); ++j) width[j] = std::max(width[j], measure(r[j]));
  std::ostringstream o;
  auto line = [&](const std::vector<std::string>& cells) {
    for (size_t j = 0; j < cells.size() && j < width.size(); ++j) {
      size_t pad = width[j] - measure(cells[j]);
      if (j == 0)
        o << cells[j] << std::string(pad, ' ');
      else
        o << "  " << std::string(pad, ' ') << cells[j];
    }
    o << "\n";
  };
  if (!t.title.empty()) o << t.title << "\n";
  line(t.columns);
  size_t total = 0;
  for (size_t j = 0; j < width.size(); ++j) total += width[j] + (j ? 2 : 0);
  o << std::string(total, '-') << "\n";
  for (const auto& r : t.rows) line(r);
  if (!t.caption.empty()) o << t.caption << "\n";
  return o.str();
}

std::string format_matrix(const Matrix& m) {
  Table t{m.title, {""}, {}, m.caption};
  for (const auto& c : m.col_labels) t.columns.push_back(c);
  for (size_t i = 0; i < m.row_labels.size(); ++i) {
    std::vector<std::string> row{m.row_labels[i]};
    for (size_t j = 0; j < m.col_labels.size(); ++j)
      row.push_back(i < m.values.size() && j < m.values[i].size() ? fixed(m.values[i][j], m.precision) : "");
    t.rows.push_back(row);
  }
  return format_table(t);
}

}  // namespace modula::train
