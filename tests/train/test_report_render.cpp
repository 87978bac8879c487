// Reports checked as drawn: every plotted point inside its plot area, legends, labels and
// titles inside their SVG (the clipping and cut-legend bugs), and each report rendered by
// headless Chromium to a PNG that is not blank. Reports: a multi-task train run with eval,
// a continual run, a pretrain run (through the CLI) and the quickstart's.
//
// MODULA_REPORT_RENDER_DIR=dir keeps the reports and screenshots there to look at.
#include <gtest/gtest.h>
#include <signal.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <set>
#include <sstream>
#include <thread>

#include "modula/train/report.h"
#include "support/png.h"
#include "support/process.h"
#include "tiny.h"

using namespace modula;
using namespace modula::testing;

namespace {

// ---- SVG geometry ---------------------------------------------------------------------
double attr(const std::string& tag, const std::string& name, double fallback = NAN) {
  auto at = tag.find(" " + name + "=\"");
  if (at == std::string::npos) return fallback;
  return std::atof(tag.c_str() + at + name.size() + 3);
}

std::string attr_text(const std::string& tag, const std::string& name) {
  auto at = tag.find(" " + name + "=\"");
  if (at == std::string::npos) return "";
  at += name.size() + 3;
  return tag.substr(at, tag.find('"', at) - at);
}

size_t code_points(const std::string& s) {
  size_t n = 0;
  for (unsigned char ch : s) n += (ch & 0xC0) != 0x80;
  return n;
}

// Text between tags, one entry per <tspan> (or the whole text).
std::vector<std::string> text_lines(const std::string& inner) {
  std::vector<std::string> lines;
  std::string cur;
  bool in_tag = false;
  for (size_t i = 0; i < inner.size(); ++i) {
    if (inner[i] == '<') {
      if (inner.compare(i, 6, "<tspan") == 0 && !cur.empty()) lines.push_back(cur), cur.clear();
      in_tag = true;
    } else if (inner[i] == '>') {
      in_tag = false;
    } else if (!in_tag) {
      cur += inner[i];
    }
  }
  if (!cur.empty()) lines.push_back(cur);
  for (auto& l : lines)  // entities count as one character
    for (auto p = l.find('&'); p != std::string::npos; p = l.find('&', p + 1)) l.erase(p + 1, l.find(';', p) - p);
  return lines;
}

// Checks one <svg>: returns the problems found.
std::vector<std::string> svg_problems(const std::string& svg) {
  std::vector<std::string> out;
  const std::string open = svg.substr(0, svg.find('>'));
  double W = 0, H = 0;
  {
    std::string vb = attr_text(open, "viewBox");
    double x0 = 0, y0 = 0;
    if (std::sscanf(vb.c_str(), "%lf %lf %lf %lf", &x0, &y0, &W, &H) != 4) return {"no viewBox in " + open};
  }
  const double tol = 0.5;
  double px0 = NAN, py0 = NAN, px1 = NAN, py1 = NAN;
  auto inside_svg = [&](double x, double y) { return x >= -tol && x <= W + tol && y >= -tol && y <= H + tol; };
  auto inside_plot = [&](double x, double y) {  // strictly: a point on the frame is half cut
    return x >= px0 + 2 && x <= px1 - 2 && y >= py0 + 2 && y <= py1 - 2;
  };
  for (size_t at = svg.find('<', 1); at != std::string::npos; at = svg.find('<', at + 1)) {
    const std::string tag = svg.substr(at, svg.find('>', at) - at);
    const std::string cls = attr_text(tag, "class");
    if (tag.rfind("<rect", 0) == 0) {
      double x = attr(tag, "x"), y = attr(tag, "y"), w = attr(tag, "width"), h = attr(tag, "height");
      if (!inside_svg(x, y) || !inside_svg(x + w, y + h)) out.push_back("rect outside the SVG: " + tag);
      if (cls == "plot-area") px0 = x, py0 = y, px1 = x + w, py1 = y + h;
    } else if (tag.rfind("<polyline", 0) == 0) {
      std::string pts = attr_text(tag, "points");
      for (size_t p = 0; p < pts.size();) {
        double x = 0, y = 0;
        int n = 0;
        if (std::sscanf(pts.c_str() + p, " %lf,%lf%n", &x, &y, &n) != 2) break;
        p += static_cast<size_t>(n);
        if (!(px0 == px0)) {
          out.push_back("polyline before its plot area");
          break;
        }
        if (!inside_plot(x, y)) {
          out.push_back("point (" + std::to_string(x) + ", " + std::to_string(y) + ") on or outside the plot area");
          break;
        }
      }
    } else if (tag.rfind("<circle", 0) == 0) {
      if (!inside_plot(attr(tag, "cx"), attr(tag, "cy"))) out.push_back("marker outside the plot area: " + tag);
    } else if (tag.rfind("<text", 0) == 0) {
      auto end = svg.find("</text>", at);
      auto lines = text_lines(svg.substr(svg.find('>', at) + 1, end - svg.find('>', at) - 1));
      double px = attr(tag, "font-size", attr(open, "font-size", 11));
      double em = tag.find("bold") != std::string::npos ? 0.62 * 1.1 : 0.62;
      double w = 0;
      for (const auto& l : lines) w = std::max(w, static_cast<double>(code_points(l)) * em * px);
      const std::string anchor = attr_text(tag, "text-anchor");
      double from = anchor == "middle" ? -w / 2 : anchor == "end" ? -w : 0;
      double x = attr(tag, "x", 0), y = attr(tag, "y", 0), angle = 0;
      const std::string tr = attr_text(tag, "transform");
      if (!tr.empty()) {
        std::sscanf(tr.c_str(), "translate(%lf,%lf) rotate(%lf)", &x, &y, &angle);
        const double r = angle * M_PI / 180;
        for (double s : {from, from + w})
          if (!inside_svg(x + s * std::cos(r), y + s * std::sin(r)))
            out.push_back("rotated text runs out of the SVG: " + tag + ">" + (lines.empty() ? "" : lines[0]));
      } else {
        double bottom = y + 14.0 * static_cast<double>(lines.size() - 1) + 3;
        if (!inside_svg(x + from, y - 0.8 * px) || !inside_svg(x + from + w, bottom))
          out.push_back("text runs out of the SVG (" + std::to_string(W) + " x " + std::to_string(H) + "): " + tag +
                        ">" + (lines.empty() ? "" : lines[0]));
      }
    }
  }
  return out;
}

// Every <svg> of the document; returns how many there were.
size_t check_geometry(const std::string& html, const std::string& what) {
  size_t n = 0;
  for (size_t at = html.find("<svg"); at != std::string::npos; at = html.find("<svg", at + 1), ++n)
    for (const auto& p : svg_problems(html.substr(at, html.find("</svg>", at) - at)))
      ADD_FAILURE() << what << " svg " << n << ": " << p;
  return n;
}

// ---- rendering ----------------------------------------------------------------------------
std::string chromium() {
  if (const char* env = std::getenv("MODULA_CHROMIUM")) return fs::is_file(env) ? env : "";  // "" skips
  for (const char* p : {"/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"})
    if (fs::is_file(p)) return p;
  return "";
}

struct Output {
  TempDir tmp;
  std::string dir;
  Output() {
    const char* keep = std::getenv("MODULA_REPORT_RENDER_DIR");
    dir = keep ? keep : tmp.path;
    fs::make_dirs(dir);
  }
  std::string operator/(const std::string& name) const { return fs::join(dir, name); }
};

// Screenshots `html_path` and checks the picture is a page with content: many colours, and
// dark (text) and coloured (chart) pixels.
void render(const std::string& html_path, const std::string& png_path) {
  const std::string exe = chromium();
  if (exe.empty()) GTEST_SKIP() << "chromium not installed (Debian: apt-get install chromium): render check skipped";
  TempDir profile;
  fs::remove_tree(png_path);
  pid_t pid =
      spawn({exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--user-data-dir=" + profile.path,
             "--screenshot=" + png_path, "--window-size=1200,2000", "file://" + html_path},
            profile / "chromium.log");
  int status = -1;
  for (int i = 0; i < 1200 && status == -1; ++i) {  // 120 s
    int st = 0;
    if (waitpid(pid, &st, WNOHANG) == pid)
      status = WIFEXITED(st) ? WEXITSTATUS(st) : 128;
    else
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  if (status == -1) kill(pid, SIGKILL), waitpid(pid, nullptr, 0);
  ASSERT_EQ(status, 0) << "chromium failed: " << slurp(profile / "chromium.log");
  auto png = read_png(png_path);
  ASSERT_EQ(png.error, "") << png_path;
  EXPECT_EQ(png.width, 1200u);
  std::set<uint32_t> colours;
  size_t dark = 0, coloured = 0, n = png.rgb.size() / 3;
  for (size_t i = 0; i < n; ++i) {
    uint8_t r = png.rgb[3 * i], g = png.rgb[3 * i + 1], b = png.rgb[3 * i + 2];
    colours.insert(static_cast<uint32_t>(r) << 16 | g << 8 | b);
    dark += r < 100 && g < 100 && b < 100;
    coloured += std::max({r, g, b}) - std::min({r, g, b}) > 60;
  }
  EXPECT_GT(colours.size(), 50u) << png_path << ": too few colours for a rendered report";
  EXPECT_GT(dark, n / 1000) << png_path << ": no text";
  EXPECT_GT(coloured, n / 2000) << png_path << ": no chart lines or cells";
}

int run_cli(const std::vector<std::string>& args, const std::string& log) {
  std::vector<std::string> argv{MODULA_CLI};
  argv.insert(argv.end(), args.begin(), args.end());
  fs::remove_tree(log);  // spawn appends
  return wait_exit(spawn(argv, log));
}

std::vector<nlohmann::json> jsonl(const std::string& path) {
  std::vector<nlohmann::json> out;
  std::ifstream in(path);
  for (std::string line; std::getline(in, line);) out.push_back(nlohmann::json::parse(line));
  return out;
}

size_t occurrences(const std::string& s, const std::string& what) {
  size_t n = 0;
  for (size_t p = s.find(what); p != std::string::npos; p = s.find(what, p + 1)) ++n;
  return n;
}

std::string title_of(const std::string& html) {
  auto a = html.find("<title>") + 7;
  return html.substr(a, html.find("</title>") - a);
}

// Two tasks with eval data on the tiny BERT.
std::string multitask_config(const Output& d, const std::string& name, bool continual) {
  write_tiny_tokenizer(d / "tokenizer.json", true);
  write_lines(d / "sent.jsonl", tiny_classification(32));
  write_lines(d / "sent_dev.jsonl", tiny_classification(12));
  write_lines(d / "tags.jsonl", tiny_tagging(32));
  write_lines(d / "tags_dev.jsonl", tiny_tagging(12));
  std::ofstream(d / (name + ".yaml"))
      << "model: " << fixture("hf/models/bert") << "\ntokenizer: tokenizer.json\noutput: " << name << "\nseed: 3\n"
      << (continual ? "continual: {enabled: true, module: {peft_type: LORA, r: 2, target_modules: all-linear}}\n"
                    : "modules:\n  - {name: m, config: {peft_type: LORA, r: 4, target_modules: all-linear}}\n")
      << "tasks:\n"
      << "  - {name: sentiment, type: sequence_classification, train: sent.jsonl, eval: sent_dev.jsonl}\n"
      << "  - {name: entities, type: token_classification, train: tags.jsonl, eval: tags_dev.jsonl}\n"
      << "optim: {lr: 0.01, lr_heads: 0.05, max_steps: " << (continual ? 12 : 40) << ", batch_size: 4}\n"
      << "eval: {every: " << (continual ? 6 : 10) << "}\nlog_every: 10\n";
  return d / (name + ".yaml");
}

}  // namespace

TEST(ReportGeometry, ChartsAndMatricesFitTheirSvg) {
  train::Report r("geometry");
  std::vector<double> x, y;
  for (int i = 1; i <= 60; ++i) x.push_back(i), y.push_back(2.0 / i);  // the lowest point is the last
  train::LineChart c{"many long series names", "step", "loss", {}};
  for (int k = 0; k < 7; ++k)
    c.series.push_back({"per-task LoRA/reverse+shift+duplicate+sort, seed " + std::to_string(k), x, y});
  c.smooth = 0.6;
  r.add(c);
  train::LineChart lg{"log axis", "step", "perplexity", {{"a", x, y}, {"one point", {5}, {0.5}}}, true};
  lg.markers = true;
  r.add(lg);
  r.add(train::LineChart{"flat", "step", "accuracy", {{"flat", {0, 10}, {1.0, 1.0}}}});
  r.add(train::Matrix{"(a) continual learning: full fine-tuning",
                      {"after shift+duplicate", "after reverse+shift"},
                      {"shift+duplicate", "reverse+shift", "sort+reverse (held out)"},
                      {{1, 0.5, 0.25}, {0.5, 1, 0}},
                      ""});
  EXPECT_EQ(check_geometry(r.html(), "synthetic"), 4u);
}

TEST(ReportGeometry, TheOldLayoutIsCaught) {
  // The checker itself: a point on the frame and a legend past the edge are reported.
  std::string svg =
      "<svg viewBox=\"0 0 100 100\" font-size=\"11\"><rect class=\"plot-area\" x=\"10\" y=\"10\" width=\"80\" "
      "height=\"80\"/><polyline class=\"series\" points=\"10.00,90.00 50,50\"/><text x=\"80\" y=\"20\">a long "
      "legend entry</text></svg>";
  EXPECT_EQ(svg_problems(svg).size(), 2u);
}

TEST(ReportGeometry, EmaIsDebiasedAndSkipsGaps) {
  auto s = train::ema({2, 2, NAN, 2}, 0.9);
  EXPECT_DOUBLE_EQ(s[0], 2);
  EXPECT_DOUBLE_EQ(s[1], 2);
  EXPECT_TRUE(std::isnan(s[2]));
  EXPECT_NEAR(s[3], 2, 1e-12);
  auto t = train::ema({0, 1}, 0.5);
  EXPECT_NEAR(t[1], 0.5 * 1 / 0.75, 1e-12);  // (0.5·0.5·0 + 0.5·1) / (1 − 0.25)
  EXPECT_THROW(train::ema({1}, 1.0), std::invalid_argument);
}

TEST(ReportRender, TrainMultiTaskWithEval) {
  Output d;
  auto cfg = multitask_config(d, "multi", false);
  ASSERT_EQ(run_cli({"train", cfg, "--overwrite"}, d / "multi.log"), 0) << slurp(d / "multi.log");
  // Every step in the metrics whatever log_every, and the CSV beside it.
  size_t steps = 0, evals = 0;
  for (const auto& j : jsonl(d / "multi/metrics.jsonl")) steps += j["type"] == "step", evals += j["type"] == "eval";
  EXPECT_EQ(steps, 40u);
  EXPECT_EQ(evals, 6u);  // 2 tasks × steps 10, 20, 30 (the final evaluation is in result.json)
  std::ifstream csv(d / "multi/metrics.csv");
  std::string header, row;
  std::getline(csv, header);
  EXPECT_EQ(header,
            "type,phase,step,global_step,task,loss,lr,grad_norm,tokens_per_s,elapsed_s,accuracy,macro_f1,perplexity,"
            "examples");
  size_t rows = 0, eval_rows = 0;
  while (std::getline(csv, row)) ++rows, eval_rows += row.rfind("eval,", 0) == 0;
  EXPECT_EQ(rows, 46u);
  EXPECT_EQ(eval_rows, 6u);

  auto html = slurp(d / "multi/report.html");
  EXPECT_EQ(title_of(html), "modula train · multi");
  for (const char* s : {">sentiment<", ">entities<", "accuracy by task", "macro-F1 by task", "eval loss by task",
                        "throughput and time", "tokens/s", "max_steps: 40", "moving average"})
    EXPECT_NE(html.find(s), std::string::npos) << s;
  EXPECT_EQ(occurrences(html, "class=\"raw\""), 2u);  // one faint line per task
  EXPECT_GE(check_geometry(html, "train report"), 4u);
  render(d / "multi/report.html", d / "train_report.png");
}

TEST(ReportRender, ContinualRunShowsTaskByTime) {
  Output d;
  auto cfg = multitask_config(d, "continual", true);
  ASSERT_EQ(run_cli({"train", cfg, "--overwrite"}, d / "continual.log"), 0) << slurp(d / "continual.log");
  auto log = slurp(d / "continual.log");
  EXPECT_EQ(occurrences(log, "Average accuracy"), 1u) << log;
  // Rows are tasks, columns points in time.
  auto table = log.substr(log.find("continual learning: accuracy (task x time)"));
  std::istringstream in(table);
  std::string title, header, rule, first, second;
  std::getline(in, title), std::getline(in, header), std::getline(in, rule), std::getline(in, first),
      std::getline(in, second);
  EXPECT_NE(header.find("after sentiment"), std::string::npos) << table;
  EXPECT_NE(header.find("after entities"), std::string::npos) << table;
  EXPECT_EQ(first.rfind("sentiment", 0), 0u) << table;
  EXPECT_EQ(second.rfind("entities", 0), 0u) << table;

  auto html = slurp(d / "continual/report.html");
  EXPECT_EQ(title_of(html), "modula train · continual");
  for (const char* s : {"accuracy (task × time)", ">after sentiment<", "continual: sentiment", "continual: entities"})
    EXPECT_NE(html.find(s), std::string::npos) << s;
  EXPECT_GE(check_geometry(html, "continual report"), 3u);
  render(d / "continual/report.html", d / "continual_report.png");
}

TEST(ReportRender, PretrainReportIsTitledPretrain) {
  Output d;
  write_tiny_tokenizer(d / "tokenizer.json", false);
  write_lines(d / "text.jsonl", tiny_text(20));
  write_lines(d / "dev.jsonl", tiny_text(5));
  std::ofstream(d / "pre.yaml") << "model: " << fixture("hf/models/llama/config.json") << "\n"
                                << "tokenizer: tokenizer.json\noutput: pre\nseed: 1\n"
                                << "tasks: [{name: lm, type: causal_lm, train: text.jsonl, eval: dev.jsonl}]\n"
                                << "optim: {lr: 0.003, max_steps: 30, batch_size: 4}\neval: {every: 10}\n";
  ASSERT_EQ(run_cli({"pretrain", d / "pre.yaml", "--overwrite"}, d / "pre.log"), 0) << slurp(d / "pre.log");
  auto html = slurp(d / "pre/report.html");
  EXPECT_EQ(title_of(html), "modula pretrain · pre");
  EXPECT_NE(html.find("perplexity by task"), std::string::npos);
  EXPECT_GE(check_geometry(html, "pretrain report"), 3u);
  render(d / "pre/report.html", d / "pretrain_report.png");
}

TEST(ReportRender, QuickstartReport) {
  Output d;
  ASSERT_EQ(run_cli({"quickstart", "--tiny", "--out", d / "quickstart"}, d / "quickstart.log"), 0)
      << slurp(d / "quickstart.log");
  auto html = slurp(d / "quickstart/report.html");
  EXPECT_GE(check_geometry(html, "quickstart report"), 8u);
  render(d / "quickstart/report.html", d / "quickstart_report.png");
}
