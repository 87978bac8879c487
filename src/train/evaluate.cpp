// Evaluation of records with the trainer's own loop (task_runtime.h: eval_pass, finish_eval).
#include <cmath>

#include "evaluator_state.h"

namespace modula::train {
namespace {

constexpr std::string_view kEvaluateTag = "eval";

}  // namespace

nlohmann::json EvalResult::to_json() const {
  nlohmann::json m = nlohmann::json::object();
  for (const auto& [k, v] : metrics) m[k] = std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(nullptr);
  return {{"task", task}, {"type", train::to_string(type)}, {"examples", examples}, {"metrics", m}};
}

size_t Evaluator::State::find(const std::string& name_or_type) const {
  if (name_or_type.empty() && tasks.size() == 1) return 0;
  std::vector<size_t> of_type;
  std::string known;
  for (size_t i = 0; i < tasks.size(); ++i) {
    if (tasks[i].cfg.name == name_or_type) return i;
    if (to_string(tasks[i].cfg.type) == name_or_type) of_type.push_back(i);
    known += (known.empty() ? "" : ", ") + tasks[i].cfg.name + " (" + to_string(tasks[i].cfg.type) + ")";
  }
  if (of_type.size() == 1) return of_type[0];
  throw_error<ConfigError>(kEvaluateTag, source + ": " +
                                             (name_or_type.empty() ? std::string("several tasks: name one")
                                                                   : "no single task named '" + name_or_type + "'") +
                                             " (tasks: " + known + ")");
}

detail::InputModules Evaluator::State::activate(size_t ti) {
  auto it = enabled.find(ti);
  return detail::activate_modules(adapters, composed, it == enabled.end() ? nullptr : &it->second,
                                  composition ? &*composition : nullptr);
}

void Evaluator::State::route(size_t ti, const Batch& b) {
  detail::route_batch(*routing, composition ? composition->context.get() : nullptr, metadata, ti, b, device);
}

std::vector<std::string> Evaluator::task_names() const {
  std::vector<std::string> out;
  for (const auto& t : state_->tasks) out.push_back(t.cfg.name);
  return out;
}

std::vector<std::string> Evaluator::untrained() const {
  return state_->composition ? state_->composition->untrained : std::vector<std::string>{};
}

const TaskConfig& Evaluator::task(const std::string& name_or_type) const {
  return state_->tasks[state_->find(name_or_type)].cfg;
}

EvalResult Evaluator::evaluate(const std::string& task, const std::vector<nlohmann::json>& records,
                               const std::string& where) {
  auto& s = *state_;
  const size_t ti = s.find(task);
  auto& t = s.tasks[ti];
  t.eval = t.enc.encode(records, where);
  detail::check_vocabulary(t.cfg.name, t.eval, s.model_config.vocab_size);
  torch::NoGradGuard g;
  auto inputs = s.activate(ti);
  detail::EvalPass pass;
  pass.batch_size = s.batch_size, pass.seed = s.seed, pass.task_index = ti;
  pass.vocab_size = s.model_config.vocab_size, pass.device = s.device;
  auto sums = detail::eval_pass(*s.model, t, inputs, pass, [&](const Batch& b) { s.route(ti, b); });
  EvalResult r;
  r.task = t.cfg.name, r.type = t.cfg.type, r.examples = static_cast<int64_t>(t.eval.size());
  r.metrics = detail::finish_eval(t, sums);
  t.eval.clear();
  return r;
}

}  // namespace modula::train
