// LT-SFT: two runs of the training loop around the top-K selection of |θ₁ − θ₀|.
#include "modula/train/lt_sft.h"

#include <cmath>
#include <stdexcept>

#include "modula/modules/lottery_ticket.h"
#include "modula/util/error.h"

namespace modula {
namespace {

constexpr std::string_view kLtSftTag = "sparse_ft";

// Freezes every backbone parameter; restores the requires_grad flags at scope exit.
class FrozenBackbone {
 public:
  explicit FrozenBackbone(Backbone& model) {
    for (auto& p : model.parameters()) saved_.emplace_back(p, p.requires_grad()), p.set_requires_grad(false);
  }
  ~FrozenBackbone() {
    for (auto& [p, flag] : saved_) p.set_requires_grad(flag);
  }
  FrozenBackbone(const FrozenBackbone&) = delete;
  FrozenBackbone& operator=(const FrozenBackbone&) = delete;

 private:
  std::vector<std::pair<torch::Tensor, bool>> saved_;
};

// Phase 1: dense fine-tuning of the ticket's parameters.
void full_phase(Backbone& model, const LotteryTicket& ticket, const LtSftOptions& o,
                const std::function<torch::Tensor()>& step, std::vector<double>& losses) {
  train::TrainLoop loop({{ticket.parameters(), o.lr()}}, o.loop_options(o.full_steps(), "phase 1 (full fine-tuning)"),
                        &model);
  loop.run([&](int64_t) { return step(); }, [&](const train::StepStats& s) { losses.push_back(s.loss); });
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
  if (full_steps_ < 1) throw_error(kLtSftTag, "full_steps must be >= 1, got " + std::to_string(full_steps_));
  if (sparse_steps_ < 0) throw_error(kLtSftTag, "sparse_steps must be >= 0, got " + std::to_string(sparse_steps_));
  if (!(lr_ > 0.0) || !std::isfinite(lr_)) throw_error(kLtSftTag, "lr must be > 0, got " + c10::str(lr_));
  if (weight_decay_ < 0.0) throw_error(kLtSftTag, "weight_decay must be >= 0, got " + c10::str(weight_decay_));
  if (max_grad_norm_ < 0.0) throw_error(kLtSftTag, "max_grad_norm must be >= 0, got " + c10::str(max_grad_norm_));
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
  if (!step) throw_error(kLtSftTag, "lt_sft() needs a step callback");
  LtSftReport local;
  LtSftReport& r = report ? *report : local;
  SparseDiff diff{nullptr};
  {
    LotteryTicket ticket(model, options);  // θ₀ and every requires_grad flag restored on exit
    full_phase(model, ticket, train, step, r.full_losses);
    diff = ticket.select();
  }
  FrozenBackbone frozen(model);  // phase 2 trains φ only
  sparse_phase(model, diff, train, step, r.sparse_losses);
  return diff;
}

}  // namespace modula
