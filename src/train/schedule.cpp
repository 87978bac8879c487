// Warmup + decay schedules and task-sampling distributions.
#include "modula/train/schedule.h"

#include <algorithm>
#include <cmath>

#include "modula/train/config.h"

namespace modula::train {

Schedule schedule_from_string(const std::string& name) {
  if (name == "constant") return Schedule::Constant;
  if (name == "linear") return Schedule::Linear;
  if (name == "cosine") return Schedule::Cosine;
  throw_error<TrainError>("train", "unknown schedule '" + name + "' (constant, linear, cosine)");
}

std::string to_string(Schedule schedule) {
  switch (schedule) {
    case Schedule::Constant:
      return "constant";
    case Schedule::Linear:
      return "linear";
    case Schedule::Cosine:
      return "cosine";
  }
  return "?";
}

double lr_factor(Schedule schedule, int64_t step, int64_t warmup, int64_t total, double min_ratio) {
  if (warmup > 0 && step < warmup) return static_cast<double>(step + 1) / static_cast<double>(warmup);
  if (schedule == Schedule::Constant) return 1.0;
  double span = static_cast<double>(std::max<int64_t>(1, total - warmup));
  double progress = std::clamp(static_cast<double>(step - warmup) / span, 0.0, 1.0);
  if (schedule == Schedule::Linear) return min_ratio + (1.0 - min_ratio) * (1.0 - progress);
  return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + std::cos(M_PI * progress));
}

double lr_factor(const std::string& schedule, int64_t step, int64_t warmup, int64_t total, double min_ratio) {
  return lr_factor(schedule_from_string(schedule), step, warmup, total, min_ratio);
}

std::vector<double> sampling_probabilities(const std::vector<int64_t>& sizes, const std::string& sampling,
                                           double temperature) {
  std::vector<double> w(sizes.size());
  for (size_t i = 0; i < sizes.size(); ++i) {
    double n = static_cast<double>(sizes[i]);
    if (sampling == "uniform")
      w[i] = 1.0;
    else if (sampling == "proportional")
      w[i] = n;
    else if (sampling == "temperature")
      w[i] = std::pow(n, 1.0 / temperature);
    else
      throw_error<TrainError>("train", "unknown sampling '" + sampling + "' (proportional, temperature, uniform)");
  }
  double total = 0;
  for (double x : w) total += x;
  if (total <= 0) throw_error<TrainError>("train", "task sampling: every task has an empty training set");
  for (double& x : w) x /= total;
  return w;
}

}  // namespace modula::train
