// Warmup + decay schedules and task-sampling distributions.
#include "modula/train/schedule.h"

#include "modula/train/config.h"

#include <algorithm>
#include <cmath>

namespace modula::train {

double lr_factor(const std::string& schedule, int64_t step, int64_t warmup, int64_t total, double min_ratio) {
  if (warmup > 0 && step < warmup) return static_cast<double>(step + 1) / static_cast<double>(warmup);
  if (schedule == "constant") return 1.0;
  double span = static_cast<double>(std::max<int64_t>(1, total - warmup));
  double progress = std::clamp(static_cast<double>(step - warmup) / span, 0.0, 1.0);
  if (schedule == "linear") return min_ratio + (1.0 - min_ratio) * (1.0 - progress);
  if (schedule == "cosine") return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + std::cos(M_PI * progress));
  throw TrainError("[train] unknown schedule '" + schedule + "' (constant, linear, cosine)");
}

std::vector<double> sampling_probabilities(const std::vector<int64_t>& sizes, const std::string& sampling,
                                           double temperature) {
  std::vector<double> w(sizes.size());
  for (size_t i = 0; i < sizes.size(); ++i) {
    double n = static_cast<double>(sizes[i]);
    if (sampling == "uniform") w[i] = 1.0;
    else if (sampling == "proportional") w[i] = n;
    else if (sampling == "temperature") w[i] = std::pow(n, 1.0 / temperature);
    else throw TrainError("[train] unknown sampling '" + sampling + "' (proportional, temperature, uniform)");
  }
  double total = 0;
  for (double x : w) total += x;
  if (total <= 0) throw TrainError("[train] task sampling: every task has an empty training set");
  for (double& x : w) x /= total;
  return w;
}

}  // namespace modula::train
