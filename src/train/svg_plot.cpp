// SVG line charts and heat-map matrices for the HTML reports: layouts sized from the text
// they hold (wrapped titles, labels and legends), axes that cover every point with margin.
#include "svg_plot.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <sstream>

namespace modula::train::svg {
namespace {

const char* kPalette[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"};
constexpr size_t kPaletteSize = sizeof kPalette / sizeof *kPalette;
constexpr double kLine = 14;         // text line height at 11 px
constexpr double kTitlePx = 13;      // titles: 13 px bold
constexpr double kBold = 1.1;        // bold glyphs are wider
constexpr size_t kMaxPoints = 1500;  // per drawn line; longer series are thinned evenly

size_t code_points(const std::string& s) {
  size_t n = 0;
  for (unsigned char ch : s) n += (ch & 0xC0) != 0x80;
  return n;
}

// A coordinate with two decimals (short files, no float noise such as 0.30000000000000004).
std::string coord(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f", v);
  return buf;
}

// Title lines at the top of a figure of width W; returns the y below them.
double title_block(std::ostringstream& o, const std::string& title, double x, double W) {
  auto chars = static_cast<size_t>(std::max(8.0, (W - x - 8) / (kTitlePx * 0.62 * kBold)));
  double y = 18;
  for (const auto& line : wrap(title, chars)) {
    o << "<text x=\"" << coord(x) << "\" y=\"" << coord(y) << "\" font-size=\"" << kTitlePx
      << "\" font-weight=\"bold\">" << html_escape(line) << "</text>\n";
    y += kTitlePx + 4;
  }
  return y - kTitlePx + 2;
}

// Multi-line text: one <tspan> per line, the first baseline at y.
void text_lines(std::ostringstream& o, const std::vector<std::string>& lines, double x, double y, const char* anchor) {
  o << "<text x=\"" << coord(x) << "\" y=\"" << coord(y) << "\" text-anchor=\"" << anchor << "\">";
  for (size_t i = 0; i < lines.size(); ++i)
    o << "<tspan x=\"" << coord(x) << "\"" << (i ? " dy=\"" + coord(kLine) + "\"" : "") << ">" << html_escape(lines[i])
      << "</tspan>";
  o << "</text>\n";
}

// Past the palette, lines repeat its colours dashed.
std::string dash(size_t k) { return (k / kPaletteSize) % 2 ? " stroke-dasharray=\"6,3\"" : ""; }

}  // namespace

double text_width(const std::string& text, double font_px) {
  return static_cast<double>(code_points(text)) * 0.62 * font_px;
}

std::vector<std::string> wrap(const std::string& text, size_t max_chars) {
  max_chars = std::max<size_t>(max_chars, 4);
  std::vector<std::string> lines;
  std::string line;
  size_t line_n = 0, last_break = std::string::npos;  // byte index after a break character
  size_t break_n = 0;
  for (size_t i = 0; i < text.size();) {
    size_t len = 1;
    auto c = static_cast<unsigned char>(text[i]);
    if (c >= 0xF0)
      len = 4;
    else if (c >= 0xE0)
      len = 3;
    else if (c >= 0xC0)
      len = 2;
    if (line_n == max_chars) {  // full: break at the last break character, or here
      if (last_break != std::string::npos && last_break > 0) {
        std::string rest = line.substr(last_break);
        line.resize(last_break);
        lines.push_back(line);
        line = rest, line_n -= break_n;
      } else {
        lines.push_back(line);
        line.clear(), line_n = 0;
      }
      last_break = std::string::npos;
      while (!line.empty() && line[0] == ' ') line.erase(0, 1), --line_n;
    }
    std::string ch = text.substr(i, len);
    if (!(line.empty() && ch == " ")) {
      line += ch, ++line_n;
      if (ch == " " || ch == "/" || ch == "+" || ch == "_" || ch == "-" || ch == ",")
        last_break = line.size(), break_n = line_n;
    }
    i += len;
  }
  while (!line.empty() && line.back() == ' ') line.pop_back();
  if (!line.empty() || lines.empty()) lines.push_back(line);
  for (auto& l : lines)
    while (!l.empty() && l.back() == ' ') l.pop_back();
  return lines;
}

std::string num(double v, int precision) {
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

std::string Axis::label(double tick) const { return num(log ? std::pow(10.0, tick) : tick, log ? 3 : 6); }

Axis nice_axis(double lo, double hi, int count, bool log) {
  Axis a;
  a.log = log;
  if (!(lo <= hi) || !std::isfinite(lo) || !std::isfinite(hi)) lo = log ? 0.1 : 0, hi = 1;  // no data
  if (log) {  // lo, hi are values (> 0): round ends and ticks at 1-2-5 × 10^k
    lo = std::max(lo, 1e-300), hi = std::max(hi, lo);
    std::vector<double> steps;  // candidates from below lo to above hi
    for (int k = static_cast<int>(std::floor(std::log10(lo))) - 1; k <= static_cast<int>(std::ceil(std::log10(hi)));
         ++k)
      for (double m : {1.0, 2.0, 5.0}) steps.push_back(m * std::pow(10.0, k));
    double l = steps.front(), h = steps.back();
    for (double s : steps)
      if (s <= lo * (1 + 1e-12)) l = s;
    for (auto it = steps.rbegin(); it != steps.rend(); ++it)
      if (*it >= hi * (1 - 1e-12)) h = *it;
    if (h <= l) h = l * 2;
    a.lo = std::log10(l), a.hi = std::log10(h);
    std::vector<double> all, decades;
    for (double s : steps)
      if (s >= l * (1 - 1e-12) && s <= h * (1 + 1e-12)) {
        all.push_back(std::log10(s));
        double m = s / std::pow(10.0, std::floor(std::log10(s) + 1e-9));
        if (std::abs(m - 1) < 1e-6) decades.push_back(std::log10(s));
      }
    if (all.size() <= 8) {
      a.ticks = all;
    } else if (decades.size() >= 2) {
      size_t stride = (decades.size() + 5) / 6;
      for (size_t i = 0; i < decades.size(); i += stride) a.ticks.push_back(decades[i]);
    } else {
      a.ticks = {a.lo, a.hi};
    }
    return a;
  }
  if (hi - lo < 1e-12 * std::max(1.0, std::abs(hi))) {  // one value: a window around it
    double d = std::abs(lo) > 0 ? std::abs(lo) * 0.1 : 0.5;
    lo -= d, hi += d;
  }
  double raw = (hi - lo) / std::max(count, 1);
  double mag = std::pow(10.0, std::floor(std::log10(raw)));
  double step = 10 * mag;
  for (double m : {1.0, 2.0, 5.0})
    if (m * mag >= raw * (1 - 1e-9)) {
      step = m * mag;
      break;
    }
  a.lo = std::floor(lo / step + 1e-9) * step, a.hi = std::ceil(hi / step - 1e-9) * step;
  if (a.hi <= a.lo) a.hi = a.lo + step;
  for (double i = 0, n = std::round((a.hi - a.lo) / step); i <= n; ++i) {
    double t = a.lo + i * step;
    a.ticks.push_back(std::abs(t) < step * 1e-9 ? 0.0 : std::round(t / step) * step);
  }
  return a;
}

std::string line_chart(const LineChart& c) {
  const double W = 760, ph = 250, inset = 6;
  auto usable = [&](double x, double y) { return std::isfinite(x) && std::isfinite(y) && (!c.log_y || y > 0); };
  double xlo = INFINITY, xhi = -INFINITY, ylo = INFINITY, yhi = -INFINITY;
  std::vector<std::vector<std::pair<double, double>>> pts(c.series.size());
  for (size_t k = 0; k < c.series.size(); ++k)
    for (size_t i = 0; i < c.series[k].x.size(); ++i)
      if (usable(c.series[k].x[i], c.series[k].y[i])) {
        double x = c.series[k].x[i], y = c.series[k].y[i];
        pts[k].emplace_back(x, y);
        xlo = std::min(xlo, x), xhi = std::max(xhi, x), ylo = std::min(ylo, y), yhi = std::max(yhi, y);
      }
  const Axis ax = nice_axis(xlo, xhi, 6), ay = nice_axis(ylo, yhi, 5, c.log_y);
  double tick_w = 0;
  for (double t : ay.ticks) tick_w = std::max(tick_w, text_width(ay.label(t)));
  const double left = std::max(72.0, 8 + kLine + 8 + tick_w + 6);  // charts of a page align when ticks are short
  const double right = std::max(16.0, text_width(ax.label(ax.ticks.back())) / 2 + 6);
  const double pw = W - left - right;
  std::ostringstream body;
  const double top = title_block(body, c.title, left, W) + 10;
  auto X = [&](double x) { return left + inset + (x - ax.lo) / (ax.hi - ax.lo) * (pw - 2 * inset); };
  auto Y = [&](double y) {
    double v = c.log_y ? std::log10(y) : y;
    return top + inset + (1.0 - (v - ay.lo) / (ay.hi - ay.lo)) * (ph - 2 * inset);
  };
  auto Yt = [&](double t) { return top + inset + (1.0 - (t - ay.lo) / (ay.hi - ay.lo)) * (ph - 2 * inset); };
  body << "<rect class=\"plot-area\" x=\"" << coord(left) << "\" y=\"" << coord(top) << "\" width=\"" << coord(pw)
       << "\" height=\"" << coord(ph) << "\" fill=\"none\" stroke=\"#999\"/>\n";
  for (double t : ay.ticks)
    body << "<line x1=\"" << coord(left) << "\" x2=\"" << coord(left + pw) << "\" y1=\"" << coord(Yt(t)) << "\" y2=\""
         << coord(Yt(t)) << "\" stroke=\"#eee\"/><text x=\"" << coord(left - 6) << "\" y=\"" << coord(Yt(t) + 4)
         << "\" text-anchor=\"end\">" << ay.label(t) << "</text>\n";
  for (double t : ax.ticks)
    body << "<line x1=\"" << coord(X(t)) << "\" x2=\"" << coord(X(t)) << "\" y1=\"" << coord(top + ph) << "\" y2=\""
         << coord(top + ph + 4) << "\" stroke=\"#999\"/><text x=\"" << coord(X(t)) << "\" y=\"" << coord(top + ph + 16)
         << "\" text-anchor=\"middle\">" << ax.label(t) << "</text>\n";
  body << "<text x=\"" << coord(left + pw / 2) << "\" y=\"" << coord(top + ph + 32) << "\" text-anchor=\"middle\">"
       << html_escape(c.x_label) << "</text>\n<text transform=\"translate(" << coord(left - 6 - tick_w - 10) << ","
       << coord(top + ph / 2) << ") rotate(-90)\" text-anchor=\"middle\">"
       << html_escape(c.y_label + (c.log_y ? " (log scale)" : "")) << "</text>\n";

  auto polyline = [&](size_t k, const std::vector<std::pair<double, double>>& p, const std::vector<double>& ys,
                      const char* cls, const char* colour, const char* extra) {
    size_t stride = (p.size() + kMaxPoints - 1) / kMaxPoints;
    body << "<polyline class=\"" << cls << "\" fill=\"none\" stroke=\"" << colour << "\" " << extra << dash(k)
         << " points=\"";
    for (size_t i = 0; i < p.size(); i += std::max<size_t>(stride, 1))
      body << coord(X(p[i].first)) << "," << coord(Y(ys[i])) << " ";
    if (stride > 1 && (p.size() - 1) % stride) body << coord(X(p.back().first)) << "," << coord(Y(ys.back()));
    body << "\"/>\n";
  };
  for (size_t k = 0; k < c.series.size(); ++k) {
    const auto& p = pts[k];
    const char* colour = kPalette[k % kPaletteSize];
    std::vector<double> ys;
    for (auto& q : p) ys.push_back(q.second);
    body << "<g><title>" << html_escape(c.series[k].name) << "</title>\n";
    if (c.smooth > 0 && p.size() > 2) {
      polyline(k, p, ys, "raw", colour, "stroke-width=\"1\" stroke-opacity=\"0.25\"");
      polyline(k, p, ema(ys, c.smooth), "series", colour, "stroke-width=\"1.8\"");
    } else {
      polyline(k, p, ys, "series", colour, "stroke-width=\"1.6\"");
    }
    if (c.markers || p.size() == 1)
      for (auto& q : p)
        body << "<circle class=\"point\" cx=\"" << coord(X(q.first)) << "\" cy=\"" << coord(Y(q.second))
             << "\" r=\"2.5\" fill=\"" << colour << "\"/>\n";
    body << "</g>\n";
  }

  // Legend under the plot: entries flow left to right in rows, names wrapped to fit a row.
  const double swatch = 28, gap = 16, pad = 6, avail = pw - 2 * pad;
  const auto max_chars = static_cast<size_t>((avail - swatch - gap) / kCharWidth);
  const double legend_y = top + ph + 44;
  double H = legend_y, x = 0, y = legend_y + pad, used = 0;
  size_t row_lines = 1;
  for (size_t k = 0; k < c.series.size(); ++k) {
    auto name = wrap(c.series[k].name.empty() ? "(unnamed)" : c.series[k].name, max_chars);
    double w = swatch + gap;
    for (const auto& l : name) w = std::max(w, swatch + text_width(l) + gap);
    if (x > 0 && x + w - gap > avail) x = 0, y += kLine * static_cast<double>(row_lines) + 2, row_lines = 1;
    const double ex = left + pad + x;
    body << "<line x1=\"" << coord(ex) << "\" x2=\"" << coord(ex + swatch - 8) << "\" y1=\"" << coord(y + 7)
         << "\" y2=\"" << coord(y + 7) << "\" stroke=\"" << kPalette[k % kPaletteSize] << "\" stroke-width=\"2.5\""
         << dash(k) << "/>\n";
    text_lines(body, name, ex + swatch, y + 11, "start");
    row_lines = std::max(row_lines, name.size());
    x += w, used = std::max(used, x - gap);
  }
  if (!c.series.empty()) {
    y += kLine * static_cast<double>(row_lines) + 2;
    if (c.smooth > 0) {
      auto note = wrap("faint: every point; solid: moving average (EMA weight " + num(c.smooth, 2) + ")",
                       static_cast<size_t>(avail / kCharWidth));
      body << "<g fill=\"#666\">";
      text_lines(body, note, left + pad, y + 11, "start");
      body << "</g>\n";
      y += kLine * static_cast<double>(note.size()) + 2;
      for (const auto& l : note) used = std::max(used, text_width(l));
    }
    body << "<rect class=\"legend\" x=\"" << coord(left) << "\" y=\"" << coord(legend_y) << "\" width=\""
         << coord(std::min(pw, used + 2 * pad)) << "\" height=\"" << coord(y - legend_y + pad)
         << "\" fill=\"none\" stroke=\"#ddd\"/>\n";
    H = y + pad + 8;
  }
  std::ostringstream o;
  o << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << W << "\" height=\"" << coord(H) << "\" viewBox=\"0 0 "
    << W << " " << coord(H) << "\" font-family=\"sans-serif\" font-size=\"" << kFontPx << "\">\n"
    << body.str() << "</svg>\n";
  return o.str();
}

namespace {

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

}  // namespace

std::string matrix(const Matrix& m) {
  // Column labels wrap inside their cells (no rotation to run off the figure); row labels
  // set the left margin.
  double widest = 0;
  for (const auto& l : m.col_labels) widest = std::max(widest, text_width(l));
  const double cell_w = std::clamp(widest + 12, 64.0, 130.0);
  const auto col_chars = static_cast<size_t>((cell_w - 8) / kCharWidth);
  std::vector<std::vector<std::string>> cols, rows;
  size_t col_lines = 1, row_lines = 1;
  for (const auto& l : m.col_labels)
    cols.push_back(wrap(l, col_chars)), col_lines = std::max(col_lines, cols.back().size());
  double row_w = 0;
  for (const auto& l : m.row_labels) {
    rows.push_back(wrap(l, 34));
    row_lines = std::max(row_lines, rows.back().size());
    for (const auto& s : rows.back()) row_w = std::max(row_w, text_width(s));
  }
  const double left = 10 + row_w + 10, cell_h = std::max(28.0, kLine * static_cast<double>(row_lines) + 10);
  const double grid_w = left + cell_w * static_cast<double>(m.col_labels.size()) + 10;
  const double W = std::max(grid_w, std::min(760.0, text_width(m.title, kTitlePx) * kBold + 16));
  std::ostringstream body;
  const double header = title_block(body, m.title, 4, W) + 10;
  const double top = header + kLine * static_cast<double>(col_lines) + 6;
  for (size_t j = 0; j < cols.size(); ++j) {
    double x = left + cell_w * (static_cast<double>(j) + 0.5);
    // Bottom-aligned: the last line sits just above the cells.
    text_lines(body, cols[j], x, top - 6 - kLine * static_cast<double>(cols[j].size() - 1) - 2, "middle");
  }
  for (size_t i = 0; i < m.row_labels.size(); ++i) {
    double y = top + cell_h * static_cast<double>(i);
    double first = y + cell_h / 2 + 4 - kLine * static_cast<double>(rows[i].size() - 1) / 2;
    text_lines(body, rows[i], left - 8, first, "end");
    for (size_t j = 0; j < m.col_labels.size(); ++j) {
      double v = m.values[i][j], x = left + cell_w * static_cast<double>(j);
      double t = std::isnan(v) ? 0.0 : (v - m.lo) / (m.hi - m.lo);
      body << "<rect class=\"cell\" x=\"" << coord(x) << "\" y=\"" << coord(y) << "\" width=\"" << coord(cell_w)
           << "\" height=\"" << coord(cell_h) << "\" fill=\"" << heat_colour(v, m.lo, m.hi)
           << "\" stroke=\"#fff\"/><text x=\"" << coord(x + cell_w / 2) << "\" y=\"" << coord(y + cell_h / 2 + 4)
           << "\" text-anchor=\"middle\" fill=\"" << (t > 0.6 ? "#fff" : "#222") << "\">" << fixed(v, m.precision)
           << "</text>\n";
    }
  }
  const double H = top + cell_h * static_cast<double>(m.row_labels.size()) + 10;
  std::ostringstream o;
  o << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << coord(W) << "\" height=\"" << coord(H)
    << "\" viewBox=\"0 0 " << coord(W) << " " << coord(H) << "\" font-family=\"sans-serif\" font-size=\"" << kFontPx
    << "\">\n"
    << body.str() << "</svg>\n";
  return o.str();
}

}  // namespace modula::train::svg
