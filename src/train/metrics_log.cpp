// metrics.jsonl and its CSV twin.
#include "metrics_log.h"

#include <cmath>
#include <cstdio>

#include "modula/train/config.h"
#include "modula/util/error.h"
#include "modula/util/fs.h"

namespace modula::train::detail {
namespace {

std::string metrics_csv_field(const nlohmann::json& v) {
  if (v.is_null()) return "";
  if (v.is_number_float()) {
    double d = v.get<double>();
    if (!std::isfinite(d)) return "";
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.9g", d);
    return buf;
  }
  std::string s = v.is_string() ? v.get<std::string>() : v.dump();
  if (s.find_first_of(",\"\r\n") == std::string::npos) return s;
  std::string q = "\"";
  for (char ch : s) q += ch == '"' ? std::string("\"\"") : std::string(1, ch);
  return q + "\"";
}

}  // namespace

std::string metrics_csv_row(const nlohmann::json& line) {
  const std::string type = line.value("type", "");
  if (type != "step" && type != "eval") return "";
  std::string row;
  for (size_t i = 0; i < metrics_csv_columns().size(); ++i) {
    const auto& key = metrics_csv_columns()[i];
    if (i) row += ",";
    if (line.contains(key)) row += metrics_csv_field(line[key]);
  }
  return row;
}

void MetricsLog::open(const std::string& dir, const std::vector<std::string>& kept) {
  for (auto [f, name] : {std::pair<std::ofstream*, const char*>{&jsonl_, "metrics.jsonl"}, {&csv_, "metrics.csv"}}) {
    f->open(fs::join(dir, name), std::ios::trunc);
    if (!*f) throw_error<TrainError>("train", "cannot write " + fs::join(dir, name));
  }
  for (size_t i = 0; i < metrics_csv_columns().size(); ++i) csv_ << (i ? "," : "") << metrics_csv_columns()[i];
  csv_ << "\n";
  for (const auto& line : kept) {
    jsonl_ << line << "\n";
    auto j = nlohmann::json::parse(line, nullptr, false);
    auto row = j.is_discarded() ? "" : metrics_csv_row(j);
    if (!row.empty()) csv_ << row << "\n";
  }
  jsonl_.flush(), csv_.flush();
}

void MetricsLog::write(const nlohmann::json& line) {
  if (!jsonl_.is_open()) return;
  jsonl_ << line.dump() << "\n" << std::flush;
  auto row = metrics_csv_row(line);
  if (!row.empty()) csv_ << row << "\n" << std::flush;
}

void MetricsLog::close() {
  jsonl_.close();
  csv_.close();
}

}  // namespace modula::train::detail
