// One phase of the Trainer: parameter groups, the training loop over sampled single-task
// batches, periodic evaluation, early stopping, checkpoints and resume.
#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <sstream>

#include "distributed_shard.h"
#include "modula/routing/router.h"
#include "modula/train/schedule.h"
#include "modula/util/compat.h"
#include "trainer_state.h"

namespace modula::train {
namespace {

using detail::kTag;
using detail::mean_of;
using detail::mix;
using detail::Phase;
using detail::PhaseClock;
using detail::PhaseOutcome;
using detail::PhaseProgress;
using json = nlohmann::json;

// The progress line of a step for the callbacks and metrics.jsonl.
StepInfo step_info(const Phase& ph, const StepStats& st, const PhaseClock& clock, int64_t total) {
  StepInfo info;
  double elapsed = clock.elapsed();
  info.step = st.step, info.total_steps = total, info.phase = ph.label(), info.task = clock.task;
  info.loss = st.loss, info.lr = st.lr, info.grad_norm = st.grad_norm, info.elapsed_s = elapsed;
  info.tokens_per_s = elapsed > 0 ? static_cast<double>(clock.tokens) / elapsed : 0;
  const int64_t done = st.step - clock.first_step;
  info.eta_s = done > 0 ? elapsed / static_cast<double>(done) * static_cast<double>(total - st.step) : 0;
  return info;
}

}  // namespace

// ---- parameters, optimizer ---------------------------------------------------------
// Everything a checkpoint restores: all module parameters, heads, the backbone if trained.
std::vector<std::pair<std::string, torch::Tensor>> Trainer::State::named_state() {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (auto& a : adapters) {
    for (auto& m : a.modules)
      for (auto& p : m.module->named_parameters())
        out.emplace_back("adapter/" + a.name + "/" + m.site + "/" + p.key(), p.value());
    if (a.input)
      for (auto& p : a.input->named_parameters())
        out.emplace_back("adapter/" + a.name + "/input/" + p.key(), p.value());
    if (a.state) {
      int64_t i = 0;
      for (auto& p : a.state->parameters()) out.emplace_back("adapter/" + a.name + "/state/" + std::to_string(i++), p);
    }
  }
  if (composition)
    for (auto& f : composition->fusions)
      for (auto& [site, fusion] : f.sites)
        for (auto& [key, p] : fusion->fusion_parameters())
          out.emplace_back("compose/" + f.name + "/" + site + "/" + key, p);
  if (composition)  // learned routers of route(softmax|smear|top<k>, ...), one per site
    for (size_t i = 0; i < composition->routers.size(); ++i)
      for (auto& p : composition->routers[i]->named_parameters())
        out.emplace_back("compose/router" + std::to_string(i) + "/" + p.key(), p.value());
  for (auto& t : tasks)
    if (t.head)
      for (auto& p : t.head->named_parameters()) out.emplace_back("head/" + t.cfg.name + "/" + p.key(), p.value());
  if (backbone_trainable)
    for (auto& p : state_dict_params()) out.push_back(p);
  return out;
}

std::vector<std::pair<std::string, torch::Tensor>> Trainer::State::state_dict_params() {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (auto& p : model->named_parameters())
    if (p.key().find(".adapters.") == std::string::npos) out.emplace_back("backbone/" + p.key(), p.value());
  return out;
}

// Parameter groups (modules / routers / heads / backbone), each with its own peak lr; a
// group with lr 0 is frozen. Sets requires_grad of everything the phase trains.
std::vector<ParamGroup> Trainer::State::param_groups(const Phase& ph) {
  const auto& o = cfg.optim;
  std::set<const void*> router_params;
  std::vector<torch::Tensor> routers;
  for (auto& m : model->modules(false))
    if (dynamic_cast<RouterImpl*>(m.get()))
      for (auto& p : m->parameters())
        if (router_params.insert(p.unsafeGetTensorImpl()).second) routers.push_back(p);
  std::vector<torch::Tensor> modules, heads, backbone;
  for (size_t i = 0; i < adapters.size(); ++i) {
    bool on = ph.train_adapters.count(adapters[i].name) > 0;
    for (auto& p : adapters[i].parameters()) {
      p.set_requires_grad(on);
      if (on && !router_params.count(p.unsafeGetTensorImpl())) modules.push_back(p);
    }
  }
  if (composition)
    for (auto& p : composition->parameters()) {  // the fusions train with the modules
      p.set_requires_grad(true);
      modules.push_back(p);
    }
  for (size_t i = 0; i < tasks.size(); ++i) {
    if (!tasks[i].head) continue;
    bool on = std::find(ph.tasks.begin(), ph.tasks.end(), i) != ph.tasks.end();
    for (auto& p : tasks[i].head->parameters()) {
      p.set_requires_grad(on);
      if (on) heads.push_back(p);
    }
  }
  if (ph.backbone)
    for (auto& [name, p] : state_dict_params())
      if (!router_params.count(p.unsafeGetTensorImpl())) backbone.push_back(p);
  std::vector<ParamGroup> groups;
  auto add = [&](std::vector<torch::Tensor>& params, std::optional<double> lr) {
    double peak = lr.value_or(o.lr);
    if (params.empty() || peak == 0) {
      for (auto& p : params) p.set_requires_grad(false);
      return;
    }
    groups.push_back({params, peak});
  };
  add(modules, o.lr_modules);
  add(routers, o.lr_routers);
  add(heads, o.lr_heads);
  add(backbone, o.lr_backbone);
  if (groups.empty())
    throw_error<TrainError>(kTag,
                            "phase " + ph.label() + " has nothing to train (no trainable modules, heads or backbone)");
  return groups;
}

// ---- evaluation --------------------------------------------------------------------
std::map<std::string, double> Trainer::State::evaluate(size_t ti) {
  TaskRuntime& t = tasks[ti];
  torch::NoGradGuard g;
  model->eval();
  auto inputs = activate(ti);
  detail::EvalPass pass;
  pass.batch_size = cfg.eval.batch_size, pass.max_examples = cfg.eval.max_examples;
  pass.seed = cfg.seed, pass.task_index = ti, pass.vocab_size = model_config.vocab_size, pass.device = device;
  if (parallel()) pass.world = dist->world_size(), pass.rank = dist->rank();
  auto sums = detail::eval_pass(*model, t, inputs, pass, [&](const Batch& b) { route_rows(ti, b); });
  model->train();
  if (parallel()) detail::reduce_eval(*dist, sums, device);
  return detail::finish_eval(t, sums);
}

void Trainer::State::log_line(json j) { metrics.write(j); }

// ---- checkpoints -------------------------------------------------------------------
void Trainer::State::save(const Phase& ph, int64_t step, torch::optim::Optimizer& opt, const json& loop) {
  if (!writes()) return;  // every rank holds the same state: rank 0 writes it
  CheckpointData d;
  for (auto& [name, t] : named_state()) d.tensors.emplace_back(name, t.detach().cpu());
  at::Generator cpu_rng = at::detail::getDefaultCPUGenerator();  // a handle on the global generator
  d.tensors.emplace_back("rng/cpu", cpu_rng.get_state());
  torch::serialize::OutputArchive ar;
  opt.save(ar);
  std::ostringstream os;
  ar.save_to(os);
  d.optimizer = os.str();
  json pos = json::array();
  for (auto& t : tasks) pos.push_back({t.epoch, t.cursor});
  d.state = {{"stage", ph.stage}, {"phase", ph.index}, {"step", step},
             {"data", pos},       {"loop", loop},      {"results", results}};
  save_checkpoint(out("checkpoints"), ph.global_offset + step, d, cfg.checkpoint.keep);
}

void Trainer::State::restore_tensors(const LoadedCheckpoint& ck) {
  std::map<std::string, torch::Tensor> saved(ck.data.tensors.begin(), ck.data.tensors.end());
  torch::NoGradGuard g;
  for (auto& [name, t] : named_state()) {
    auto it = saved.find(name);
    if (it == saved.end())
      throw_error<TrainError>(kTag,
                              "checkpoint " + ck.dir + " does not match the config: it has no tensor '" + name + "'");
    if (it->second.sizes() != t.sizes())
      throw_error<TrainError>(kTag,
                              "checkpoint " + ck.dir + ": tensor '" + name + "' has another shape than the run's");
    t.copy_(it->second);
  }
  auto rng = saved.find("rng/cpu");
  if (rng != saved.end()) {
    at::Generator cpu_rng = at::detail::getDefaultCPUGenerator();
    cpu_rng.set_state(rng->second);
  }
  const json& pos = ck.data.state.at("data");
  for (size_t i = 0; i < tasks.size() && i < pos.size(); ++i) tasks[i].epoch = pos[i][0], tasks[i].cursor = pos[i][1];
}

// The loop of a phase: AdamW with the config's schedule, accumulation and clipping.
LoopOptions Trainer::State::loop_options(const Phase& ph) const {
  const auto& o = cfg.optim;
  LoopOptions lo;
  lo.optimizer = OptimizerKind::AdamW;
  lo.weight_decay = o.weight_decay, lo.beta1 = o.beta1, lo.beta2 = o.beta2, lo.eps = o.eps;
  lo.schedule = schedule_from_string(o.schedule);
  lo.warmup_steps = o.warmup_steps, lo.total_steps = ph.steps(o.max_steps), lo.min_lr_ratio = o.min_lr_ratio;
  lo.grad_accum = o.grad_accum, lo.max_grad_norm = o.max_grad_norm;
  lo.label = "[train] " + ph.label();
  if (parallel()) lo.sync_gradients = [d = dist](const std::vector<torch::Tensor>& ps) { d->average_gradients(ps); };
  return lo;
}

// The loss of micro-batch `micro` of optimizer step `step`: a task sampled from `probs`,
// its next batch (MLM-masked), its modules on.
MicroLoss Trainer::State::micro_loss(const Phase& ph, const std::vector<double>& probs, int64_t step, int64_t micro,
                                     PhaseClock& clock) {
  const uint64_t at = static_cast<uint64_t>(ph.global_offset + step), m = static_cast<uint64_t>(micro);
  std::mt19937_64 rng(mix({cfg.seed, 0x5a3eULL, at, m}));
  std::discrete_distribution<size_t> pick(probs.begin(), probs.end());
  size_t ti = ph.tasks[pick(rng)];
  auto& t = tasks[ti];
  clock.task = t.cfg.name;
  Batch b = t.next_batch(cfg.optim.batch_size);
  if (t.cfg.type == TaskType::MaskedLM)
    mask_tokens(b, t.cfg.mlm_probability, t.enc.mask_id(), model_config.vocab_size, t.enc.special_ids(),
                mix({cfg.seed, 0x3a5cULL, at, m}));
  clock.tokens += b.tokens;  // of the global batch: tokens/s counts every rank's
  // Data parallel: this rank's rows of the global batch, its mean loss weighted by
  // W · (its scored positions / the batch's) so that the average over ranks of the
  // gradients is the gradient of the global batch's mean loss. A rank left without rows (a
  // short last batch) runs one row at weight 0.
  double share = 1.0;
  if (parallel()) {
    const int64_t global = detail::scored_count(t.cfg.type, b);
    auto [lo, hi] = detail::shard_rows(b.input_ids.size(0), dist->rank(), dist->world_size());
    const bool empty = hi == lo;
    b = empty ? detail::slice_rows(b, 0, 1) : detail::slice_rows(b, lo, hi);
    share = global > 0 && !empty ? static_cast<double>(detail::scored_count(t.cfg.type, b)) / global : 0.0;
  }
  auto inputs = activate(ti);
  route_rows(ti, b);
  if (autocast) compat::set_cuda_autocast(true);
  auto loss = detail::batch_loss(*model, t, inputs, b.to(device));
  if (autocast) compat::set_cuda_autocast(false);
  if (!parallel()) return {loss, t.cfg.weight, "task '" + t.cfg.name + "'"};
  shard_loss += share * loss.item<double>();
  return {loss, t.cfg.weight * share * dist->world_size(),
          "task '" + t.cfg.name + "' on rank " + std::to_string(dist->rank())};
}

// Continues a phase from resume_from when it was saved in this phase: tensors, RNG, data
// positions, optimizer state, step, early-stopping state.
void Trainer::State::resume_phase(const Phase& ph, TrainLoop& loop, PhaseProgress& pp) {
  auto& ck = resume_from;
  if (!ck || ck->data.state.value("stage", "") != ph.stage || ck->data.state.value("phase", int64_t{-1}) != ph.index)
    return;
  restore_tensors(*ck);
  torch::serialize::InputArchive ar;
  std::istringstream is(ck->data.optimizer);
  ar.load_from(is);
  loop.optimizer().load(ar);
  loop.set_steps_done(ck->data.state.at("step"));
  const json& saved = ck->data.state.at("loop");
  pp.best = saved.contains("best") && saved["best"].is_number() ? saved["best"].get<double>() : INFINITY;
  pp.bad_evals = saved.value("bad_evals", int64_t{0});
  pp.last_loss = saved.value("last_loss", 0.0);
  note("resumed " + ph.label() + " at step " + std::to_string(loop.steps_done()) + " from " + ck->dir);
  ck.reset();
}

// Evaluation every eval.every steps with early stopping on the mean eval loss.
void Trainer::State::maybe_evaluate(const Phase& ph, int64_t step, PhaseProgress& pp) {
  const auto& e = cfg.eval;
  if (e.every <= 0 || step % e.every != 0 || step >= ph.steps(cfg.optim.max_steps)) return;
  double score = eval_tasks(ph, step);
  if (e.patience <= 0 || std::isnan(score)) return;
  if (score < pp.best) {
    pp.best = score, pp.bad_evals = 0;
  } else if (++pp.bad_evals >= e.patience) {
    pp.stopped = true;
    note(ph.label() + ": early stopping at step " + std::to_string(step) + " (no better eval loss for " +
         std::to_string(pp.bad_evals) + " evaluations)");
  }
}

PhaseOutcome Trainer::State::run_phase(const Phase& ph) {
  const int64_t total = ph.steps(cfg.optim.max_steps);
  auto groups = param_groups(ph);
  std::vector<torch::Tensor> trained;
  for (const auto& g : groups) trained.insert(trained.end(), g.params.begin(), g.params.end());
  TrainLoop loop(std::move(groups), loop_options(ph), model.get());
  note(ph.label() + ": " + std::to_string(loop.num_parameters()) + " trainable parameters");
  std::vector<int64_t> sizes;
  for (size_t t : ph.tasks) sizes.push_back(static_cast<int64_t>(tasks[t].train.size()));
  auto probs = sampling_probabilities(sizes, cfg.multitask.sampling, cfg.multitask.temperature);
  PhaseProgress pp;
  resume_phase(ph, loop, pp);
  // Data parallel: every rank starts from rank 0's parameters, as torch's DDP; the gradient
  // all-reduce overlaps the backward of each step's last micro-batch (the watch's hooks).
  struct Watch {
    Distributed* d;
    ~Watch() {
      if (d) d->watch_gradients({});
    }
  } watch{parallel() ? dist.get() : nullptr};
  if (parallel()) dist->broadcast(trained), dist->watch_gradients(trained);
  std::vector<RouterImpl*> routers;  // as TrainLoop finds them
  if (auto* r = dynamic_cast<RouterImpl*>(model.get())) routers.push_back(r);
  for (const auto& m : model->modules(/*include_self=*/false))
    if (auto* r = dynamic_cast<RouterImpl*>(m.get())) routers.push_back(r);
  PhaseClock clock;
  clock.first_step = loop.steps_done();
  while (loop.steps_done() < total && !pp.stopped) {
    const int64_t at = loop.steps_done();
    shard_loss = 0;
    const auto reduce_before = parallel() ? dist->gradient_stats() : Distributed::GradientStats{};
    StepStats st = loop.step([&](int64_t micro) {
      MicroLoss m = micro_loss(ph, probs, at, micro, clock);
      if (parallel() && micro + 1 == cfg.optim.grad_accum) {  // its backward starts buckets
        std::vector<torch::Tensor> roots{m.loss};             // and the routers' aux losses the loop adds
        for (auto* r : routers)
          if (r->aux_loss.defined()) roots.push_back(r->aux_loss);
        dist->arm_gradients(roots);
      }
      return m;
    });
    double allreduce_s = 0, early = 0;
    if (parallel()) {  // the global batch's mean loss, as one process logs it
      const auto r = dist->gradient_stats();
      allreduce_s = r.seconds - reduce_before.seconds;
      early = static_cast<double>(r.early - reduce_before.early) /
              static_cast<double>(std::max<int64_t>(1, r.buckets - reduce_before.buckets));
      auto l = torch::tensor({shard_loss}, torch::kFloat64).to(comm_device());
      dist->all_reduce(l);
      st.loss = l.item<double>() / static_cast<double>(cfg.optim.grad_accum);
    }
    pp.last_loss = st.loss;
    {  // metrics.jsonl gets every step (the report's curves); the callbacks every log_every
      StepInfo info = step_info(ph, st, clock, total);
      info.allreduce_s = allreduce_s;
      if (cb.on_step && (st.step % cfg.log_every == 0 || st.step == total)) cb.on_step(info);
      log_line({{"type", "step"},
                {"phase", info.phase},
                {"step", st.step},
                {"global_step", ph.global_offset + st.step},
                {"task", info.task},
                {"loss", st.loss},
                {"lr", st.lr},
                {"grad_norm", st.grad_norm},
                {"tokens_per_s", info.tokens_per_s},
                {"elapsed_s", info.elapsed_s},
                {"allreduce_s", allreduce_s},
                {"allreduce_early", early}});
    }
    maybe_evaluate(ph, st.step, pp);
    if (cfg.checkpoint.every > 0 && st.step % cfg.checkpoint.every == 0 && st.step < total && !pp.stopped)
      save(ph, st.step, loop.optimizer(), pp.to_json());
  }
  return {loop.steps_done(), pp.last_loss, pp.stopped};
}

// Evaluates the phase's tasks; returns the mean eval loss (NaN when none has eval data).
double Trainer::State::eval_tasks(const Phase& ph, int64_t step) {
  std::vector<double> losses;
  for (size_t ti : ph.tasks) {
    if (tasks[ti].eval.empty()) continue;
    auto m = evaluate(ti);
    losses.push_back(m["loss"]);
    EvalInfo e{step, ph.label(), tasks[ti].cfg.name, m};
    if (cb.on_eval) cb.on_eval(e);
    json line = {{"type", "eval"},
                 {"phase", e.phase},
                 {"step", step},
                 {"global_step", ph.global_offset + step},
                 {"task", e.task}};
    for (auto& [k, v] : m) line[k] = std::isfinite(v) ? json(v) : json(nullptr);
    log_line(line);
  }
  return losses.empty() ? NAN : mean_of(losses);
}

}  // namespace modula::train
