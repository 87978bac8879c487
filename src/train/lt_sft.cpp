// LT-SFT: two runs of the training loop around the top-K selection of |θ₁ − θ₀|.
#include "modula/train/lt_sft.h"

#include <cmath>
#include <stdexcept>

#include "modula/util/error.h"

namespace modula {
namespace {

constexpr std::string_view kTag = "sparse_ft";

// Restores every backbone parameter's requires_grad flag at scope exit.
class FlagGuard {
 public:
  explicit FlagGuard(Backbone& model) {
    for (auto& p : model.parameters()) saved_.emplace_back(p, p.requires_grad());
  }
  ~FlagGuard() {
    for (auto& [p, flag] : saved_)
      if (p.is_leaf()) p.set_requires_grad(flag);
  }
  FlagGuard(const FlagGuard&) = delete;
  FlagGuard& operator=(const FlagGuard&) = delete;

 private:
  std::vector<std::pair<torch::Tensor, bool>> saved_;
};

// Copies θ₀ back into the chosen parameters at scope exit unless dismissed.
class RestoreGuard {
 public:
  RestoreGuard(std::vector<torch::Tensor> params, std::vector<torch::Tensor> theta0)
      : params_(std::move(params)), theta0_(std::move(theta0)) {}
  ~RestoreGuard() { restore(); }
  RestoreGuard(const RestoreGuard&) = delete;
  RestoreGuard& operator=(const RestoreGuard&) = delete;
  void restore() {
    torch::NoGradGuard no_grad;
    for (size_t i = 0; i < theta0_.size(); ++i) {
      params_[i].copy_(theta0_[i]);
      params_[i].mutable_grad() = torch::Tensor();
    }
    theta0_.clear();
  }

 private:
  std::vector<torch::Tensor> params_, theta0_;
};

// Phase 1: dense fine-tuning of `params`; returns θ₁ − θ₀ per chosen parameter (float32).
std::vector<std::pair<std::string, torch::Tensor>> full_phase(
    Backbone& model, const std::vector<std::pair<std::string, torch::Tensor>>& chosen,
    const std::vector<torch::Tensor>& theta0, const LtSftOptions& o, const std::function<torch::Tensor()>& step,
    std::vector<double>& losses) {
  std::vector<torch::Tensor> params;
  for (const auto& [name, p] : chosen) params.push_back(p), p.set_requires_grad(true);
  train::TrainLoop loop({{params, o.lr()}}, o.loop_options(o.full_steps(), "phase 1 (full fine-tuning)"), &model);
  loop.run([&](int64_t) { return step(); }, [&](const train::StepStats& s) { losses.push_back(s.loss); });
  std::vector<std::pair<std::string, torch::Tensor>> deltas;
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < chosen.size(); ++i)
    deltas.emplace_back(chosen[i].first, params[i].detach().to(torch::kFloat32) - theta0[i].to(torch::kFloat32));
  return deltas;
}

// Phase 2: only the masked entries, θ = θ₀ + φ (refreshed before every forward).
void sparse_phase(Backbone& model, SparseDiff& diff, const LtSftOptions& o, const std::function<torch::Tensor()>& step,
                  std::vector<double>& losses) {
  diff->attach(model);
  if (o.sparse_steps() > 0) {
    train::TrainLoop loop({{diff->parameters(), o.lr()}},
                          o.loop_options(o.sparse_steps(), "phase 2 (sparse fine-tuning)"), &model);
    loop.run(
        [&](int64_t) {
          diff->refresh();
          return step();
        },
        [&](const train::StepStats& s) { losses.push_back(s.loss); });
  }
  diff->detach();
  for (auto& v : diff->parameters()) v.mutable_grad() = torch::Tensor();
}

}  // namespace

void LtSftOptions::validate() const {
  if (full_steps_ < 1) throw_error(kTag, "full_steps must be >= 1, got " + std::to_string(full_steps_));
  if (sparse_steps_ < 0) throw_error(kTag, "sparse_steps must be >= 0, got " + std::to_string(sparse_steps_));
  if (!(lr_ > 0.0) || !std::isfinite(lr_)) throw_error(kTag, "lr must be > 0, got " + c10::str(lr_));
  if (weight_decay_ < 0.0) throw_error(kTag, "weight_decay must be >= 0, got " + c10::str(weight_decay_));
  if (max_grad_norm_ < 0.0) throw_error(kTag, "max_grad_norm must be >= 0, got " + c10::str(max_grad_norm_));
}

train::LoopOptions LtSftOptions::loop_options(int64_t steps, const std::string& phase) const {
  train::LoopOptions o;
  o.optimizer = optimizer_;
  o.weight_decay = optimizer_ == SftOptimizer::AdamW ? weight_decay_ : 0.0;
  o.schedule = train::Schedule::Constant;
  o.total_steps = steps;
  o.max_grad_norm = max_grad_norm_;
  o.label = "[sparse_ft] LT-SFT " + phase;
  return o;
}

SparseDiff lt_sft(Backbone& model, const SparseDiffOptions& options, const LtSftOptions& train,
                  const std::function<torch::Tensor()>& step, LtSftReport* report) {
  options.validate();
  train.validate();
  if (!step) throw_error(kTag, "lt_sft() needs a step callback");
  auto chosen = select_parameters(model, options.target_parameters(), options.exclude_parameters());
  FlagGuard flags(model);
  for (auto& p : model.parameters()) p.set_requires_grad(false);
  std::vector<torch::Tensor> params, theta0;
  {
    torch::NoGradGuard no_grad;
    for (auto& [name, p] : chosen) params.push_back(p), theta0.push_back(p.detach().clone());
  }
  RestoreGuard restore(params, theta0);
  LtSftReport local;
  LtSftReport& r = report ? *report : local;

  auto deltas = full_phase(model, chosen, theta0, train, step, r.full_losses);
  theta0.clear();
  SparseDiff diff = sparse_diff_from_delta(deltas, options);
  deltas.clear();
  restore.restore();  // back to θ₀ (exact copy)
  for (auto& p : params) p.set_requires_grad(false);

  diff->to(params.front().device());
  sparse_phase(model, diff, train, step, r.sparse_losses);
  return diff;
}

}  // namespace modula
