// Internal: SVG drawing for the HTML reports (report.h) — text measurement and wrapping,
// axes with round ticks, line charts and heat-map matrices. No fonts are measured: widths
// are estimated generously (svg::kCharWidth per character) so that text never overflows.
//
// Elements carry classes the tests check geometry by: rect.plot-area (where points may
// lie), polyline.series / polyline.raw / circle.point (data), rect.legend (the legend box).
#pragma once

#include <string>
#include <vector>

#include "modula/train/report.h"

namespace modula::train::svg {

inline constexpr double kFontPx = 11;
inline constexpr double kCharWidth = 0.62 * kFontPx;  // a wide average sans-serif glyph at 11 px

// Estimated rendered width of `text` at `font_px` (UTF-8 code points × 0.62 em).
double text_width(const std::string& text, double font_px = kFontPx);
// Lines of at most `max_chars` code points, broken after spaces, '/', '+', '_', '-', ',' where
// possible and inside a word otherwise.
std::vector<std::string> wrap(const std::string& text, size_t max_chars);

// An axis over [lo, hi] (log10 units when log) that covers the data with round ends and
// ticks at 1-2-5 steps (log: 1-2-5 × 10^k).
struct Axis {
  double lo = 0, hi = 1;
  std::vector<double> ticks;  // in axis units (log10 when log)
  bool log = false;
  std::string label(double tick) const;
};
Axis nice_axis(double lo, double hi, int count, bool log = false);

// "%.*g" of v.
std::string num(double v, int precision = 4);
// Fixed decimals; "–" for NaN.
std::string fixed(double v, int precision);

std::string line_chart(const LineChart& chart);
std::string matrix(const Matrix& matrix);

}  // namespace modula::train::svg
