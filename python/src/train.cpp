// modula._modula.train: the config-driven trainer (train/trainer.h) with Python callbacks
// and, optionally, in-memory records instead of the config's data files.
#include "bindings.h"
#include "modula/train/trainer.h"

namespace modula::python {

namespace {

py::dict step_dict(const train::StepInfo& s) {
  py::dict d;
  d["step"] = s.step;
  d["total_steps"] = s.total_steps;
  d["phase"] = s.phase;
  d["task"] = s.task;
  d["loss"] = s.loss;
  d["lr"] = s.lr;
  d["grad_norm"] = s.grad_norm;
  d["tokens_per_s"] = s.tokens_per_s;
  d["elapsed_s"] = s.elapsed_s;
  d["eta_s"] = s.eta_s;
  return d;
}

py::dict eval_dict(const train::EvalInfo& e) {
  py::dict d;
  d["step"] = e.step;
  d["phase"] = e.phase;
  d["task"] = e.task;
  d["metrics"] = e.metrics;
  return d;
}

py::object continual_dict(const std::optional<train::ContinualResult>& c) {
  if (!c) return py::none();
  py::dict d;
  d["tasks"] = c->tasks;
  d["accuracy"] = c->accuracy;
  d["average_forgetting"] = c->average_forgetting;
  d["average_accuracy"] = c->average_accuracy;
  return std::move(d);
}

// data: {task: {"train": [records], "eval": [records]}}.
train::Datasets datasets(const py::object& data) {
  train::Datasets out;
  if (data.is_none()) return out;
  const nlohmann::json j = to_json(data);
  for (const auto& [task, splits] : j.items()) {
    auto& td = out[task];
    if (splits.contains("train")) td.train = splits["train"].get<std::vector<nlohmann::json>>();
    if (splits.contains("eval")) td.eval = splits["eval"].get<std::vector<nlohmann::json>>();
  }
  return out;
}

py::dict run(const py::object& config, const py::object& data, const py::object& on_step, const py::object& on_eval,
             const py::object& on_message, bool resume) {
  const bool is_dict = py::isinstance<py::dict>(config);
  const nlohmann::json j = to_json(config);
  const train::Datasets d = datasets(data);
  // Callbacks run with the GIL held; an exception they raise stops the run and propagates.
  train::Callbacks callbacks;
  if (!on_step.is_none())
    callbacks.on_step = [&on_step](const train::StepInfo& s) {
      py::gil_scoped_acquire acquire;
      on_step(step_dict(s));
    };
  if (!on_eval.is_none())
    callbacks.on_eval = [&on_eval](const train::EvalInfo& e) {
      py::gil_scoped_acquire acquire;
      on_eval(eval_dict(e));
    };
  if (!on_message.is_none())
    callbacks.on_message = [&on_message](const std::string& msg) {
      py::gil_scoped_acquire acquire;
      on_message(msg);
    };
  train::TrainResult r;
  {
    py::gil_scoped_release release;
    auto cfg = is_dict ? train::parse_train_config(j, "<python>") : train::load_train_config(j.get<std::string>());
    r = train::train(cfg, d, callbacks, resume);
  }
  py::dict out;
  out["steps"] = r.steps;
  out["trainable_parameters"] = r.trainable_parameters;
  out["total_parameters"] = r.total_parameters;
  out["final_loss"] = r.final_loss;
  out["stopped_early"] = r.stopped_early;
  out["resumed"] = r.resumed;
  out["eval"] = r.eval;
  out["continual"] = continual_dict(r.continual);
  out["baseline"] = continual_dict(r.baseline);
  out["output"] = r.output;
  return out;
}

}  // namespace

void init_train(py::module_& m) {
  m.def("train", &run, py::arg("config"), py::arg("data") = py::none(), py::arg("on_step") = py::none(),
        py::arg("on_eval") = py::none(), py::arg("on_message") = py::none(), py::arg("resume") = false);
}

}  // namespace modula::python
