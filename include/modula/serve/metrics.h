// The server's counters and latency histograms, written as Prometheus text (GET /metrics):
// requests by endpoint and status, prompt and generated tokens, time to first token and
// inter-token latency (as the client sees them: queueing and prefill included), and the
// scheduler's and module pool's gauges.
//
//   Metrics m;  m.request("completions", 200);  m.first_token(0.031);  m.inter_token(0.004);
//   res.set_content(m.prometheus(scheduler.stats(), pool.stats()), "text/plain; version=0.0.4");
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "modula/serve/module_pool.h"
#include "modula/serve/scheduler.h"

namespace modula::serve {

// Cumulative buckets (seconds) as Prometheus histograms keep them.
class Histogram {
 public:
  explicit Histogram(std::vector<double> bounds) : bounds_(std::move(bounds)), counts_(bounds_.size() + 1, 0) {}
  void observe(double seconds);
  // "<name>_bucket{le=..}", "<name>_sum", "<name>_count" lines.
  std::string text(const std::string& name, const std::string& help) const;
  int64_t count() const { return count_; }
  // The bucket bound below which fraction q of the observations fall (an upper estimate).
  double quantile(double q) const;

 private:
  std::vector<double> bounds_;
  std::vector<int64_t> counts_;
  double sum_ = 0;
  int64_t count_ = 0;
};

class Metrics {
 public:
  Metrics();
  void request(const std::string& endpoint, int status);
  void tokens(int64_t prompt, int64_t generated);
  void first_token(double seconds);
  void inter_token(double seconds);
  void disconnect();  // a client left before its answer was complete (its rows were cancelled)
  std::string prometheus(const SchedulerStats& s, const PoolStats& p) const;

 private:
  mutable std::mutex mu_;
  std::map<std::pair<std::string, int>, int64_t> requests_;
  int64_t prompt_tokens_ = 0, generated_tokens_ = 0, disconnects_ = 0;
  Histogram ttft_, itl_;
};

}  // namespace modula::serve
