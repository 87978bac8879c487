// HTML report with inline SVG charts; plain-text tables for terminals.
#include "modula/train/report.h"

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <stdexcept>

#include "modula/util/error.h"
#include "modula/util/fs.h"

namespace modula::train {
namespace {

constexpr std::string_view kTag = "report";

const char* kPalette[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"};

std::string num(double v, int precision = 3) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*g", precision, v);
  return buf;
}

std::string fixed(double v, int precision) {
  if (std::isnan(v)) return "–";
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", precision, v);
  return buf;
}

// About `count` round tick values covering [lo, hi] (1-2-5 steps).
std::vector<double> nice_ticks(double lo, double hi, int count) {
  double span = hi - lo;
  double raw = span / std::max(count, 1);
  double mag = std::pow(10.0, std::floor(std::log10(raw)));
  double step = mag;
  for (double m : {1.0, 2.0, 5.0, 10.0})
    if (m * mag >= raw) {
      step = m * mag;
      break;
    }
  std::vector<double> ticks;
  for (double t = std::ceil(lo / step) * step; t <= hi + step * 1e-9; t += step)
    ticks.push_back(std::abs(t) < step * 1e-9 ? 0.0 : t);
  return ticks;
}

struct Range {
  double lo = INFINITY, hi = -INFINITY;
  void add(double v) {
    lo = std::min(lo, v);
    hi = std::max(hi, v);
  }
  void pad() {
    if (!(lo <= hi)) lo = 0, hi = 1;
    if (hi - lo < 1e-12) lo -= 0.5, hi += 0.5;
  }
};

std::string svg_line_chart(const LineChart& c) {
  const double W = 680, H = 340, left = 64, right = 170, top = 30, bottom = 46;
  const double pw = W - left - right, ph = H - top - bottom;
  auto ty = [&](double y) { return c.log_y ? std::log10(y) : y; };
  auto usable = [&](double x, double y) { return std::isfinite(x) && std::isfinite(y) && (!c.log_y || y > 0); };
  Range rx, ry;
  for (const auto& s : c.series)
    for (size_t i = 0; i < s.x.size(); ++i)
      if (usable(s.x[i], s.y[i])) rx.add(s.x[i]), ry.add(ty(s.y[i]));
  rx.pad();
  ry.pad();
  auto X = [&](double x) { return left + (x - rx.lo) / (rx.hi - rx.lo) * pw; };
  auto Y = [&](double y) { return top + (1.0 - (y - ry.lo) / (ry.hi - ry.lo)) * ph; };
  std::ostringstream o;
  o << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << W << "\" height=\"" << H << "\" viewBox=\"0 0 " << W
    << " " << H << "\" font-family=\"sans-serif\" font-size=\"11\">\n";
  o << "<text x=\"" << left << "\" y=\"18\" font-size=\"13\" font-weight=\"bold\">" << html_escape(c.title)
    << "</text>\n";
  o << "<rect x=\"" << left << "\" y=\"" << top << "\" width=\"" << pw << "\" height=\"" << ph
    << "\" fill=\"none\" stroke=\"#999\"/>\n";
  for (double t : nice_ticks(ry.lo, ry.hi, 5)) {
    if (t < ry.lo - 1e-12 || t > ry.hi + 1e-12) continue;
    o << "<line x1=\"" << left << "\" x2=\"" << left + pw << "\" y1=\"" << Y(t) << "\" y2=\"" << Y(t)
      << "\" stroke=\"#eee\"/><text x=\"" << left - 6 << "\" y=\"" << Y(t) + 4 << "\" text-anchor=\"end\">"
      << (c.log_y ? num(std::pow(10.0, t)) : num(t)) << "</text>\n";
  }
  for (double t : nice_ticks(rx.lo, rx.hi, 6)) {
    if (t < rx.lo - 1e-12 || t > rx.hi + 1e-12) continue;
    o << "<line x1=\"" << X(t) << "\" x2=\"" << X(t) << "\" y1=\"" << top + ph << "\" y2=\"" << top + ph + 4
      << "\" stroke=\"#999\"/><text x=\"" << X(t) << "\" y=\"" << top + ph + 16 << "\" text-anchor=\"middle\">"
      << num(t, 6) << "</text>\n";
  }
  o << "<text x=\"" << left + pw / 2 << "\" y=\"" << H - 8 << "\" text-anchor=\"middle\">" << html_escape(c.x_label)
    << "</text>\n<text transform=\"translate(14," << top + ph / 2 << ") rotate(-90)\" text-anchor=\"middle\">"
    << html_escape(c.y_label + (c.log_y ? " (log)" : "")) << "</text>\n";
  for (size_t k = 0; k < c.series.size(); ++k) {
    const auto& s = c.series[k];
    const char* colour = kPalette[k % (sizeof kPalette / sizeof *kPalette)];
    o << "<polyline fill=\"none\" stroke=\"" << colour << "\" stroke-width=\"1.5\" points=\"";
    for (size_t i = 0; i < s.x.size(); ++i)
      if (usable(s.x[i], s.y[i])) o << num(X(s.x[i]), 6) << "," << num(Y(ty(s.y[i])), 6) << " ";
    o << "\"><title>" << html_escape(s.name) << "</title></polyline>\n";
    double ly = top + 10 + 16 * static_cast<double>(k);
    o << "<line x1=\"" << left + pw + 10 << "\" x2=\"" << left + pw + 28 << "\" y1=\"" << ly << "\" y2=\"" << ly
      << "\" stroke=\"" << colour << "\" stroke-width=\"2\"/><text x=\"" << left + pw + 32 << "\" y=\"" << ly + 4
      << "\">" << html_escape(s.name) << "</text>\n";
  }
  o << "</svg>\n";
  return o.str();
}

// White (lo) to blue (hi).
std::string heat_colour(double v, double lo, double hi) {
  if (std::isnan(v)) return "#f0f0f0";
  double t = std::clamp((v - lo) / (hi - lo), 0.0, 1.0);
  int r = static_cast<int>(255 - t * (255 - 33)), g = static_cast<int>(255 - t * (255 - 102)),
      b = static_cast<int>(255 - t * (255 - 172));
  char buf[16];
  std::snprintf(buf, sizeof buf, "#%02x%02x%02x", r, g, b);
  return buf;
}

std::string svg_matrix(const Matrix& m) {
  const double cell_w = 78, cell_h = 30, left = 150, top = 96;
  const double W = left + cell_w * static_cast<double>(m.col_labels.size()) + 20;
  const double H = top + cell_h * static_cast<double>(m.row_labels.size()) + 10;
  std::ostringstream o;
  o << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << W << "\" height=\"" << H << "\" viewBox=\"0 0 " << W
    << " " << H << "\" font-family=\"sans-serif\" font-size=\"11\">\n";
  o << "<text x=\"4\" y=\"18\" font-size=\"13\" font-weight=\"bold\">" << html_escape(m.title) << "</text>\n";
  for (size_t j = 0; j < m.col_labels.size(); ++j) {
    double x = left + cell_w * (static_cast<double>(j) + 0.5);
    o << "<text transform=\"translate(" << x << "," << top - 6 << ") rotate(-30)\">" << html_escape(m.col_labels[j])
      << "</text>\n";
  }
  for (size_t i = 0; i < m.row_labels.size(); ++i) {
    double y = top + cell_h * static_cast<double>(i);
    o << "<text x=\"" << left - 6 << "\" y=\"" << y + cell_h / 2 + 4 << "\" text-anchor=\"end\">"
      << html_escape(m.row_labels[i]) << "</text>\n";
    for (size_t j = 0; j < m.col_labels.size(); ++j) {
      double v = m.values[i][j], x = left + cell_w * static_cast<double>(j);
      double t = std::isnan(v) ? 0.0 : (v - m.lo) / (m.hi - m.lo);
      o << "<rect x=\"" << x << "\" y=\"" << y << "\" width=\"" << cell_w << "\" height=\"" << cell_h << "\" fill=\""
        << heat_colour(v, m.lo, m.hi) << "\" stroke=\"#fff\"/><text x=\"" << x + cell_w / 2 << "\" y=\""
        << y + cell_h / 2 + 4 << "\" text-anchor=\"middle\" fill=\"" << (t > 0.6 ? "#fff" : "#222") << "\">"
        << fixed(v, m.precision) << "</text>\n";
    }
  }
  o << "</svg>\n";
  return o.str();
}

std::string html_table(const Table& t) {
  std::ostringstream o;
  o << "<table>\n";
  if (!t.title.empty()) o << "<caption>" << html_escape(t.title) << "</caption>\n";
  o << "<tr>";
  for (const auto& c : t.columns) o << "<th>" << html_escape(c) << "</th>";
  o << "</tr>\n";
  for (const auto& r : t.rows) {
    o << "<tr>";
    for (const auto& c : r) o << "<td>" << html_escape(c) << "</td>";
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

Report& Report::add(LineChart chart) {
  for (const auto& s : chart.series)
    if (s.x.size() != s.y.size())
      throw_error(kTag, "chart '" + chart.title + "' series '" + s.name + "' has " + std::to_string(s.x.size()) +
                            " x values but " + std::to_string(s.y.size()) + " y values");
  blocks_.emplace_back(std::move(chart));
  return *this;
}

Report& Report::add(Table table) {
  for (size_t i = 0; i < table.rows.size(); ++i)
    if (table.rows[i].size() != table.columns.size())
      throw_error(kTag, "table '" + table.title + "' row " + std::to_string(i) + " has " +
                            std::to_string(table.rows[i].size()) + " cells for " +
                            std::to_string(table.columns.size()) + " columns");
  blocks_.emplace_back(std::move(table));
  return *this;
}

Report& Report::add(Matrix matrix) {
  if (matrix.values.size() != matrix.row_labels.size())
    throw_error(kTag, "matrix '" + matrix.title + "' has " + std::to_string(matrix.values.size()) + " rows for " +
                          std::to_string(matrix.row_labels.size()) + " row labels");
  for (size_t i = 0; i < matrix.values.size(); ++i)
    if (matrix.values[i].size() != matrix.col_labels.size())
      throw_error(kTag, "matrix '" + matrix.title + "' row " + std::to_string(i) + " has " +
                            std::to_string(matrix.values[i].size()) + " values for " +
                            std::to_string(matrix.col_labels.size()) + " column labels");
  if (!(matrix.hi > matrix.lo)) throw_error(kTag, "matrix '" + matrix.title + "' needs hi > lo");
  blocks_.emplace_back(std::move(matrix));
  return *this;
}

std::string Report::html() const {
  std::ostringstream o;
  o << "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>" << html_escape(title_)
    << "</title>\n<style>\n"
       "body{font-family:sans-serif;max-width:960px;margin:2em auto;padding:0 1em;color:#222}\n"
       "table{border-collapse:collapse;margin:1em 0}caption{font-weight:bold;text-align:left;padding:4px 0}\n"
       "th,td{border:1px solid #ccc;padding:4px 10px;text-align:right}th{background:#f4f4f4}\n"
       "td:first-child,th:first-child{text-align:left}.note{color:#555;font-size:90%}svg{display:block;margin:1em 0}\n"
       "</style>\n</head>\n<body>\n<h1>"
    << html_escape(title_) << "</h1>\n";
  for (const auto& block : blocks_) {
    if (auto* h = std::get_if<Heading>(&block))
      o << "<h2>" << html_escape(h->text) << "</h2>\n";
    else if (auto* p = std::get_if<Paragraph>(&block))
      o << "<p>" << html_escape(p->text) << "</p>\n";
    else if (auto* c = std::get_if<LineChart>(&block))
      o << svg_line_chart(*c);
    else if (auto* t = std::get_if<Table>(&block))
      o << html_table(*t);
    else if (auto* m = std::get_if<Matrix>(&block)) {
      o << svg_matrix(*m);
      if (!m->caption.empty()) o << "<p class=\"note\">" << html_escape(m->caption) << "</p>\n";
    }
  }
  o << "</body>\n</html>\n";
  return o.str();
}

void Report::write_html(const std::string& path) const {
  std::string dir = fs::parent(path);
  if (!dir.empty() && dir != ".") fs::make_dirs(dir);
  std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary);
    if (!f) throw std::runtime_error("[report] cannot write " + path);
    f << html();
    if (!f) throw std::runtime_error("[report] write failed for " + path);
  }
  fs::rename(tmp, path);
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
