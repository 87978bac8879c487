#include "modula/serve/metrics.h"

#include <sstream>

namespace modula::serve {
namespace {

std::vector<double> latency_bounds() {  // 1 ms .. 60 s
  return {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};
}

std::string number(double x) {
  std::ostringstream o;
  o << x;
  return o.str();
}

}  // namespace

void Histogram::observe(double seconds) {
  size_t i = 0;
  while (i < bounds_.size() && seconds > bounds_[i]) ++i;
  ++counts_[i];
  sum_ += seconds;
  ++count_;
}

std::string Histogram::text(const std::string& name, const std::string& help) const {
  std::string out = "# HELP " + name + " " + help + "\n# TYPE " + name + " histogram\n";
  int64_t cumulative = 0;
  for (size_t i = 0; i < bounds_.size(); ++i) {
    cumulative += counts_[i];
    out += name + "_bucket{le=\"" + number(bounds_[i]) + "\"} " + std::to_string(cumulative) + "\n";
  }
  out += name + "_bucket{le=\"+Inf\"} " + std::to_string(count_) + "\n";
  out += name + "_sum " + number(sum_) + "\n" + name + "_count " + std::to_string(count_) + "\n";
  return out;
}

double Histogram::quantile(double q) const {
  if (count_ == 0) return 0;
  int64_t cumulative = 0;
  for (size_t i = 0; i < bounds_.size(); ++i) {
    cumulative += counts_[i];
    if (cumulative >= q * static_cast<double>(count_)) return bounds_[i];
  }
  return bounds_.back();
}

Metrics::Metrics() : ttft_(latency_bounds()), itl_(latency_bounds()) {}

void Metrics::request(const std::string& endpoint, int status) {
  std::lock_guard<std::mutex> lk(mu_);
  ++requests_[{endpoint, status}];
}

void Metrics::tokens(int64_t prompt, int64_t generated) {
  std::lock_guard<std::mutex> lk(mu_);
  prompt_tokens_ += prompt;
  generated_tokens_ += generated;
}

void Metrics::first_token(double seconds) {
  std::lock_guard<std::mutex> lk(mu_);
  ttft_.observe(seconds);
}

void Metrics::inter_token(double seconds) {
  std::lock_guard<std::mutex> lk(mu_);
  itl_.observe(seconds);
}

void Metrics::disconnect() {
  std::lock_guard<std::mutex> lk(mu_);
  ++disconnects_;
}

std::string Metrics::prometheus(const SchedulerStats& s, const PoolStats& p) const {
  std::lock_guard<std::mutex> lk(mu_);
  std::string out;
  auto metric = [&](const std::string& name, const char* type, const std::string& help, int64_t value) {
    out += "# HELP " + name + " " + help + "\n# TYPE " + name + " " + type + "\n" + name + " " + std::to_string(value) +
           "\n";
  };
  out += "# HELP modula_requests_total Requests by endpoint and HTTP status.\n# TYPE modula_requests_total counter\n";
  for (const auto& [key, n] : requests_)
    out += "modula_requests_total{endpoint=\"" + key.first + "\",status=\"" + std::to_string(key.second) + "\"} " +
           std::to_string(n) + "\n";
  metric("modula_prompt_tokens_total", "counter", "Prompt tokens of finished requests.", prompt_tokens_);
  metric("modula_generated_tokens_total", "counter", "Tokens generated for finished requests.", generated_tokens_);
  metric("modula_client_disconnects_total", "counter", "Clients that left before their answer (rows cancelled).",
         disconnects_);
  metric("modula_queue_depth", "gauge", "Requests waiting for a batch row.", s.waiting);
  metric("modula_batch_rows", "gauge", "Rows in the running batch.", s.running);
  metric("modula_decode_steps_total", "counter", "Decode steps (one forward for all rows each).", s.steps);
  metric("modula_decode_rows_total", "counter", "Rows decoded, summed over steps (/ steps = mean batch).", s.rows);
  metric("modula_batch_rows_max", "gauge", "Largest batch decoded in one step.", s.max_rows);
  metric("modula_mixed_steps_total", "counter", "Decode steps whose rows used more than one module set.",
         s.mixed_steps);
  metric("modula_step_module_sets_max", "gauge", "Most distinct module sets in one decode step.", s.max_sets);
  metric("modula_prefills_total", "counter", "Prompts prefilled.", s.prefills);
  metric("modula_reserved_tokens", "gauge", "Cache slots the running rows reserve.", s.reserved_tokens);
  metric("modula_resident_modules", "gauge", "Module sets in the model now.", p.resident);
  metric("modula_module_loads_total", "counter", "Rebuilds of the resident module sets.", p.loads);
  metric("modula_module_evictions_total", "counter", "Module sets evicted (least recently used).", p.evictions);
  out += ttft_.text("modula_time_to_first_token_seconds", "From request to its first token.");
  out += itl_.text("modula_inter_token_latency_seconds", "Between consecutive tokens of a request.");
  return out;
}

}  // namespace modula::serve
