// Learning-rate schedules and multi-task sampling (survey §6).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace modula::train {

enum class Schedule { Constant, Linear, Cosine };
// "constant" | "linear" | "cosine"; throws TrainError listing the choices.
Schedule schedule_from_string(const std::string& name);
std::string to_string(Schedule schedule);

// Multiplier of the peak lr at optimizer step `step` (0-based): linear warmup over
// `warmup` steps, then constant, linear or cosine decay to min_ratio at `total`.
//   cosine: min + (1 − min) · ½ (1 + cos(π · progress))
double lr_factor(Schedule schedule, int64_t step, int64_t warmup, int64_t total, double min_ratio = 0.0);
double lr_factor(const std::string& schedule, int64_t step, int64_t warmup, int64_t total, double min_ratio = 0.0);

// Task sampling probabilities from dataset sizes n_i:
//   proportional p_i ∝ n_i;  temperature p_i ∝ n_i^(1/T) (Arivazhagan et al. 2019);  uniform.
std::vector<double> sampling_probabilities(const std::vector<int64_t>& sizes, const std::string& sampling,
                                           double temperature);

}  // namespace modula::train
