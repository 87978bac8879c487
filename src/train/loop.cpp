// The one training loop: optimizer over parameter groups, schedule, accumulation, clipping,
// router aux losses, non-finite checks.
#include "modula/train/loop.h"

#include <cmath>
#include <limits>
#include <stdexcept>

#include "modula/routing/router.h"
#include "modula/train/config.h"
#include "modula/util/error.h"

namespace modula::train {
namespace {

constexpr std::string_view kLoopTag = "loop";

std::string num(double v) { return c10::str(v); }

template <class Options>
std::unique_ptr<torch::optim::OptimizerOptions> adam_options(const ParamGroup& g, const LoopOptions& o) {
  auto opts = std::make_unique<Options>(g.lr);
  opts->betas({o.beta1, o.beta2}).eps(o.eps).weight_decay(o.weight_decay);
  return opts;
}

std::unique_ptr<torch::optim::Optimizer> make_optimizer(const std::vector<ParamGroup>& groups, const LoopOptions& o) {
  std::vector<torch::optim::OptimizerParamGroup> pgs;
  for (const auto& g : groups) {
    std::unique_ptr<torch::optim::OptimizerOptions> opts;
    if (o.optimizer == OptimizerKind::AdamW)
      opts = adam_options<torch::optim::AdamWOptions>(g, o);
    else if (o.optimizer == OptimizerKind::Adam)
      opts = adam_options<torch::optim::AdamOptions>(g, o);
    else
      opts = std::make_unique<torch::optim::SGDOptions>(torch::optim::SGDOptions(g.lr).weight_decay(o.weight_decay));
    pgs.emplace_back(g.params, std::move(opts));
  }
  const double lr = groups.front().lr;  // defaults; every group carries its own options
  switch (o.optimizer) {
    case OptimizerKind::AdamW:
      return std::make_unique<torch::optim::AdamW>(std::move(pgs), torch::optim::AdamWOptions(lr));
    case OptimizerKind::Adam:
      return std::make_unique<torch::optim::Adam>(std::move(pgs), torch::optim::AdamOptions(lr));
    case OptimizerKind::SGD:
      return std::make_unique<torch::optim::SGD>(std::move(pgs), torch::optim::SGDOptions(lr));
  }
  throw_error(kLoopTag, "optimizer is not AdamW, Adam or SGD");
}

// ‖g‖₂ over the parameters that have a gradient, as torch's clip_grad_norm_ computes it, as a
// tensor on the gradients' device (undefined when none has a gradient).
torch::Tensor grad_norm(const std::vector<torch::Tensor>& params) {
  std::vector<torch::Tensor> norms;
  for (const auto& p : params)
    if (p.grad().defined()) norms.push_back(p.grad().detach().norm(2.0).to(torch::kFloat));
  if (norms.empty()) return {};
  return norms.size() == 1 ? norms[0] : torch::stack(norms).norm(2.0);
}

// clip_grad_norm_'s rule on the device: g · min(1, max_norm / (‖g‖ + 1e-6)), no host sync.
void clip_gradients(const std::vector<torch::Tensor>& params, const torch::Tensor& norm, double max_norm) {
  auto coef = (max_norm / (norm + 1e-6)).clamp_max(1.0);
  torch::NoGradGuard no_grad;
  for (const auto& p : params)
    if (p.grad().defined()) p.grad().mul_(coef.to(p.grad().scalar_type()));
}

}  // namespace

void LoopOptions::validate() const {
  if (!(weight_decay >= 0.0)) throw_error(kLoopTag, "weight_decay must be >= 0, got " + num(weight_decay));
  if (!(beta1 >= 0.0 && beta1 < 1.0)) throw_error(kLoopTag, "beta1 must be in [0, 1), got " + num(beta1));
  if (!(beta2 >= 0.0 && beta2 < 1.0)) throw_error(kLoopTag, "beta2 must be in [0, 1), got " + num(beta2));
  if (!(eps > 0.0)) throw_error(kLoopTag, "eps must be > 0, got " + num(eps));
  if (warmup_steps < 0) throw_error(kLoopTag, "warmup_steps must be >= 0, got " + std::to_string(warmup_steps));
  if (total_steps < 0) throw_error(kLoopTag, "total_steps must be >= 0, got " + std::to_string(total_steps));
  if (!(min_lr_ratio >= 0.0 && min_lr_ratio <= 1.0))
    throw_error(kLoopTag, "min_lr_ratio must be in [0, 1], got " + num(min_lr_ratio));
  if (grad_accum < 1) throw_error(kLoopTag, "grad_accum must be >= 1, got " + std::to_string(grad_accum));
  if (!(max_grad_norm >= 0.0))
    throw_error(kLoopTag, "max_grad_norm must be >= 0 (0 = no clipping), got " + num(max_grad_norm));
}

struct TrainLoop::Impl {
  LoopOptions o;
  std::vector<double> peaks;
  std::vector<torch::Tensor> params;
  std::unique_ptr<torch::optim::Optimizer> opt;
  std::vector<RouterImpl*> routers;
  int64_t step = 0;

  [[noreturn]] void fail(const std::string& what, const std::string& source, double lr) const {
    std::string src = source.empty() ? "" : " (" + source + ")";
    throw TrainError(o.label + " step " + std::to_string(step + 1) + ": " + what + src + " at lr " + num(lr) +
                     ": lower the learning rate, clip gradients (max_grad_norm), or check the data");
  }

  // Σ aux_loss of the routers that ran since the last clear (undefined when none did).
  torch::Tensor aux() const {
    torch::Tensor total;
    for (auto* r : routers)
      if (r->aux_loss.defined()) total = total.defined() ? total + r->aux_loss : r->aux_loss;
    return total;
  }
  void clear_aux() {
    for (auto* r : routers) r->aux_loss = torch::Tensor();
  }

  // One micro-batch's loss and aux loss, still on the device: read once per step.
  struct Pending {
    torch::Tensor loss, aux;  // detached scalars; aux undefined when no router ran
    std::string source;
  };

  // Forward and backward of one micro-batch, queued without waiting for the device.
  Pending micro(const LossFn& fn, int64_t index, double lr) {
    clear_aux();
    MicroLoss m = fn(index);
    if (!m.loss.defined() || m.loss.numel() != 1) fail("the loss function must return a scalar loss", m.source, lr);
    torch::Tensor total = m.loss.reshape({});
    auto x = aux();
    if (x.defined() && !x.requires_grad() && total.requires_grad())
      fail(
          "a router's aux loss carries no gradient (activation checkpointing runs the layers without autograd in "
          "the forward pass): turn optim.activation_checkpointing off for routers with aux losses",
          m.source, lr);
    if (x.defined()) total = total + x;
    if (!total.requires_grad())
      fail("the loss does not depend on the trained parameters (does the loss function run the model?)", m.source, lr);
    (total * (m.weight / static_cast<double>(o.grad_accum))).backward();
    clear_aux();  // the graph is freed: no stale aux loss for the next forward
    return {m.loss.detach().reshape({}), x.defined() ? x.detach().reshape({}) : torch::Tensor(), m.source};
  }

  // The step's one host synchronisation, after its forward, backward and clipping are
  // queued: every micro-batch's loss and aux loss and the gradient norm in one copy.
  // Fails naming the first non-finite value; fills st.
  void read_back(const std::vector<Pending>& ps, const torch::Tensor& norm, StepStats& st, double lr) const {
    const auto opts = torch::dtype(torch::kDouble).device(ps.front().loss.device());
    auto scalar = [&](const torch::Tensor& t) { return t.defined() ? t.to(opts) : torch::zeros({}, opts); };
    std::vector<torch::Tensor> scalars;
    for (const auto& p : ps) scalars.push_back(scalar(p.loss));
    for (const auto& p : ps) scalars.push_back(scalar(p.aux));
    scalars.push_back(scalar(norm));
    auto host = torch::stack(scalars).to(torch::kCPU);
    const double* v = host.data_ptr<double>();
    const size_t n = ps.size();
    for (size_t i = 0; i < n; ++i) {
      if (!std::isfinite(v[i]))
        fail(std::string("loss is ") + (std::isnan(v[i]) ? "NaN" : "infinite"), ps[i].source, lr);
      if (!std::isfinite(v[n + i])) fail("router aux loss is not finite", ps[i].source, lr);
      st.loss += v[i], st.aux_loss += v[n + i];
    }
    st.grad_norm = v[2 * n];
    if (!std::isfinite(st.grad_norm)) fail("gradient norm is not finite", "", lr);
  }
};

TrainLoop::TrainLoop(std::vector<ParamGroup> groups, LoopOptions options, torch::nn::Module* model)
    : impl_(std::make_unique<Impl>()) {
  options.validate();
  auto& s = *impl_;
  s.o = std::move(options);
  if (groups.empty()) throw_error(kLoopTag, "groups is empty: nothing to train");
  for (size_t g = 0; g < groups.size(); ++g) {
    const std::string name = "groups[" + std::to_string(g) + "]";
    if (groups[g].params.empty()) throw_error(kLoopTag, name + " has no parameters");
    if (!(groups[g].lr > 0.0) || !std::isfinite(groups[g].lr))
      throw_error(kLoopTag, name + ".lr must be > 0, got " + num(groups[g].lr));
    for (const auto& p : groups[g].params) {
      if (!p.defined() || !p.is_leaf())
        throw_error(kLoopTag, name + " holds a tensor that is not a parameter (undefined or not a leaf)");
      s.params.push_back(p);
    }
    s.peaks.push_back(groups[g].lr);
  }
  s.opt = make_optimizer(groups, s.o);
  if (model) {
    if (auto* r = dynamic_cast<RouterImpl*>(model)) s.routers.push_back(r);
    for (const auto& m : model->modules(/*include_self=*/false))
      if (auto* r = dynamic_cast<RouterImpl*>(m.get())) s.routers.push_back(r);
  }
}

TrainLoop::~TrainLoop() = default;
TrainLoop::TrainLoop(TrainLoop&&) noexcept = default;
TrainLoop& TrainLoop::operator=(TrainLoop&&) noexcept = default;

StepStats TrainLoop::step(const LossFn& loss) {
  auto& s = *impl_;
  const double factor = lr_factor_at(s.step);
  const double lr0 = s.peaks[0] * factor;
  for (auto& p : s.params) p.mutable_grad() = torch::Tensor();
  std::vector<Impl::Pending> pending;
  for (int64_t m = 0; m < s.o.grad_accum; ++m) pending.push_back(s.micro(loss, m, lr0));
  if (s.o.sync_gradients) s.o.sync_gradients(s.params);
  auto norm = grad_norm(s.params);
  if (s.o.max_grad_norm > 0 && norm.defined()) clip_gradients(s.params, norm, s.o.max_grad_norm);
  StepStats st;
  s.read_back(pending, norm, st, lr0);
  st.loss /= static_cast<double>(s.o.grad_accum);
  st.aux_loss /= static_cast<double>(s.o.grad_accum);
  auto& groups = s.opt->param_groups();
  for (size_t g = 0; g < groups.size(); ++g) groups[g].options().set_lr(s.peaks[g] * factor);
  s.opt->step();
  st.step = ++s.step;
  st.lr = lr0;
  return st;
}

void TrainLoop::run(const LossFn& loss, const StepFn& on_step) {
  while (impl_->step < impl_->o.total_steps) {
    StepStats st = step(loss);
    if (on_step) on_step(st);
  }
}

int64_t TrainLoop::steps_done() const { return impl_->step; }

void TrainLoop::set_steps_done(int64_t steps) {
  if (steps < 0) throw_error(kLoopTag, "steps_done must be >= 0, got " + std::to_string(steps));
  impl_->step = steps;
}

double TrainLoop::lr_factor_at(int64_t step) const {
  const auto& o = impl_->o;
  return lr_factor(o.schedule, step, o.warmup_steps, o.total_steps, o.min_lr_ratio);
}

int64_t TrainLoop::num_parameters() const {
  int64_t n = 0;
  for (const auto& p : impl_->params) n += p.numel();
  return n;
}

const LoopOptions& TrainLoop::options() const { return impl_->o; }

torch::optim::Optimizer& TrainLoop::optimizer() { return *impl_->opt; }

}  // namespace modula::train
