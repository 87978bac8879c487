// The HTML report: self-contained SVG charts, escaping, shape validation, text tables.
#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

#include "modula/train/report.h"
#include "support/temp_dir.h"

using namespace modula::train;

namespace {

size_t occurrences(const std::string& s, const std::string& what) {
  size_t n = 0;
  for (size_t p = s.find(what); p != std::string::npos; p = s.find(what, p + 1)) ++n;
  return n;
}

Report sample_report() {
  Report r("run <1>");
  r.heading("Loss").paragraph("a & b");
  r.add(LineChart{
      "loss", "step", "loss", {{"lora", {1, 2, 3}, {2.0, 1.0, 0.5}}, {"full", {1, 2, 3}, {2.5, 0.8, 0.1}}}, true});
  r.add(Table{"summary", {"method", "accuracy"}, {{"per-task", "1.000"}, {"shared", "0.333"}}, "note"});
  r.add(Matrix{"acc", {"after A", "after B"}, {"A", "B"}, {{1.0, NAN}, {0.25, 0.9}}, "rows: stage"});
  return r;
}

}  // namespace

TEST(Report, HtmlIsSelfContainedWithOneSvgPerChart) {
  auto html = sample_report().html();
  EXPECT_EQ(html.rfind("<!DOCTYPE html>", 0), 0u);
  EXPECT_EQ(occurrences(html, "<svg"), 2u);  // the line chart and the matrix
  EXPECT_EQ(occurrences(html, "<polyline"), 2u);
  // No external resources: no scripts, stylesheets or images fetched from anywhere.
  EXPECT_EQ(html.find("<script"), std::string::npos);
  EXPECT_EQ(html.find("<link"), std::string::npos);
  EXPECT_EQ(html.find("src="), std::string::npos);
  EXPECT_EQ(occurrences(html, "http"), occurrences(html, "http://www.w3.org/2000/svg"));
  // Escaped text, table cells, matrix values (NaN shown as a dash).
  EXPECT_NE(html.find("run &lt;1&gt;"), std::string::npos);
  EXPECT_NE(html.find("a &amp; b"), std::string::npos);
  EXPECT_NE(html.find("<td class=\"num\">0.333</td>"), std::string::npos);  // numbers align right
  EXPECT_NE(html.find("<td>per-task</td>"), std::string::npos);
  EXPECT_NE(html.find(">0.25<"), std::string::npos);
  EXPECT_NE(html.find(">–<"), std::string::npos);
}

TEST(Report, LogAxisSkipsNonPositiveAndNonFinitePoints) {
  Report r("x");
  r.add(LineChart{"c", "step", "loss", {{"s", {1, 2, 3, 4}, {1.0, 0.0, NAN, 0.1}}}, true});
  auto html = r.html();
  auto start = html.find("points=\"") + 8;
  auto points = html.substr(start, html.find('"', start) - start);
  EXPECT_EQ(occurrences(points, ","), 2u);  // only (1, 1.0) and (4, 0.1)
  EXPECT_EQ(points.find("nan"), std::string::npos);
}

TEST(Report, InconsistentShapesThrowNamingTheItem) {
  Report r("x");
  try {
    r.add(LineChart{"curves", "step", "loss", {{"bad", {1, 2}, {1.0}}}, false});
    FAIL();
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("'bad'"), std::string::npos) << e.what();
  }
  EXPECT_THROW(r.add(Table{"t", {"a", "b"}, {{"1"}}, ""}), std::invalid_argument);
  EXPECT_THROW(r.add(Matrix{"m", {"r"}, {"a", "b"}, {{1.0}}, ""}), std::invalid_argument);
  EXPECT_THROW(r.add(Matrix{"m", {"r", "s"}, {"a"}, {{1.0}}, ""}), std::invalid_argument);
}

TEST(Report, WriteHtmlCreatesTheFolderAndTheFile) {
  modula::testing::TempDir dir;
  auto path = dir / "nested/out/report.html";
  auto r = sample_report();
  r.write_html(path);
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  EXPECT_EQ(ss.str(), r.html());
  EXPECT_THROW(r.write_html("/proc/modula-cannot-write/report.html"), std::exception);
}

TEST(Report, TextTableAlignsColumns) {
  auto text = format_table(Table{"", {"method", "acc"}, {{"per-task LoRA", "1.000"}, {"full", "0.25"}}, ""});
  std::istringstream in(text);
  std::string header, rule, a, b;
  std::getline(in, header);
  std::getline(in, rule);
  std::getline(in, a);
  std::getline(in, b);
  EXPECT_EQ(header, "method           acc");
  EXPECT_EQ(rule, std::string(20, '-'));
  EXPECT_EQ(a, "per-task LoRA  1.000");
  EXPECT_EQ(b, "full            0.25");
  auto m = format_matrix(Matrix{"", {"after A"}, {"A", "B"}, {{1.0, NAN}}, ""});
  EXPECT_NE(m.find("after A  1.00  –"), std::string::npos) << m;
}
