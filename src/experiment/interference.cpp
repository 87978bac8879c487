// `modula experiment interference`: the tasks trained jointly (survey §6.2, multi-task
// learning with modules) at equal trainable parameters.
#include <chrono>

#include "experiment/internal.h"
#include "modula/util/fs.h"

namespace modula::experiment::detail {
namespace {

struct Method {
  std::string label;
  std::function<void(train::TrainConfig&)> setup;
};

}  // namespace

ExperimentResult interference(const ExperimentOptions& o, const Progress& progress) {
  const Sizes z = Sizes::of(o);
  const auto tasks = classification_tasks(o, z);
  const std::string model = pretrained_backbone(o, z, tasks, progress);
  const int64_t T = static_cast<int64_t>(tasks.size()), r0 = z.lora_r;
  const std::string Ts = std::to_string(T), rs = std::to_string(r0);
  std::vector<Method> methods = {
      {"shared LoRA (rank " + std::to_string(T * r0) + ")",
       [&](train::TrainConfig& c) {
         c.modules = {{"shared", lora(T * r0, 2.0 * r0), "", true}};
       }},
      {"per-task LoRA (" + Ts + " × rank " + rs + ")",
       [&](train::TrainConfig& c) {
         for (size_t i = 0; i < tasks.size(); ++i) {
           c.modules.push_back({"m" + std::to_string(i), lora(r0), "", true});
           c.tasks[i].modules = {"m" + std::to_string(i)};
         }
       }},
      {"learned soft routing (" + Ts + " × rank " + rs + ", softmax per example)",
       [&](train::TrainConfig& c) {
         std::string spec = "route(softmax";
         for (size_t i = 0; i < tasks.size(); ++i) {
           c.modules.push_back({"m" + std::to_string(i), lora(r0), "", true});
           spec += ", m" + std::to_string(i);
         }
         c.compose = spec + ")";
       }},
      {"Polytropon (" + Ts + " skills × rank " + rs + ", task routing)",
       [&](train::TrainConfig& c) {
         c.modules = {{"poly",
                       {{"peft_type", "POLY"},
                        {"r", r0},
                        {"n_tasks", T},
                        {"n_skills", T},
                        {"n_splits", 1},
                        {"lora_alpha", 2 * r0},
                        {"routing_noise", false},
                        {"target_modules", "all-linear"}},
                       "",
                       true}};
         c.optim.lr_routers = 0.1;  // the task-to-skill logits move ~lr per step (Adam)
       }},
  };
  ExperimentResult r;
  r.name = "interference";
  r.title = "Multi-task interference: shared vs per-task vs routed modules";
  r.claim =
      "Training one shared module on several tasks causes negative interference; per-task modules avoid it, and "
      "learned routing over modules (soft or Polytropon) can share what is common without it (survey §6.2).";
  r.design = {
      "All " + Ts + " tasks are trained jointly for " + std::to_string(z.steps_per_task * T) +
          " steps (uniform task sampling, each batch from one task, each task its own head); every method has "
          "about the same trainable parameters (" +
          Ts + " × rank " + rs +
          " LoRA on every linear layer, or "
          "one LoRA of rank " +
          std::to_string(T * r0) + ").",
      "The tasks are compatible (different inputs and label sets, not conflicting answers), so interference is "
      "not forced by the design: a shared module can come out ahead (positive transfer) or behind.",
      "The soft router sees only the input (per example, per layer), not the task; per-task LoRA and Polytropon "
      "are told the task. Polytropon's routing logits train with lr 0.1 (the skills with the modules' lr).",
      "Every module scales its update by α/r with one α = 2·" + rs +
          " (α fixed across ranks, Hu et al. 2021), Polytropon included (POLY lora_alpha; PEFT's 1/r made it "
          "learn 8× slower, see generalisation) and trained with σ routing (routing_noise false).",
  };
  for (const auto& t : tasks) {
    r.tasks.push_back(t.name);
    r.task_notes[t.name] = t.note;
  }
  r.metrics = {"average accuracy"};
  for (const auto& m : methods) r.methods.push_back(method_named(m.label));
  const auto data = datasets(tasks);
  for (int64_t seed = 0; seed < o.seeds; ++seed)
    for (size_t k = 0; k < methods.size(); ++k) {
      const auto t0 = std::chrono::steady_clock::now();
      auto c = run_config(z, model, tasks,
                          fs::join(o.output, "interference/runs/seed" + std::to_string(seed) + "/" + std::to_string(k)),
                          static_cast<uint64_t>(seed), z.steps_per_task * T);
      methods[k].setup(c);
      auto res = run(c, data, progress, "seed " + std::to_string(seed) + " " + methods[k].label);
      auto& m = r.methods[k];
      m.trainable_parameters = res.trainable_parameters;
      std::vector<double> acc;
      for (const auto& t : tasks) {
        acc.push_back(res.eval.at(t.name).at("accuracy"));
        m.task_accuracy[t.name].push_back(acc.back());
      }
      m.metrics["average accuracy"].push_back(mean_of(acc));
      m.seconds += seconds_since(t0);
    }
  std::vector<double> avg;
  for (const auto& m : r.methods) avg.push_back(mean_of(m.metrics.at("average accuracy")));
  auto sd = [&](size_t k) { return std_of(r.methods[k].metrics.at("average accuracy")); };
  const double gap = avg[1] - avg[0];
  const double noise = std::max(sd(0), sd(1));
  r.findings.push_back("Per-task LoRA " + fmt(avg[1]) + " vs shared LoRA " + fmt(avg[0]) + " (difference " + fmt(gap) +
                       ", seed std up to " + fmt(noise) + "): " +
                       verdict(gap, noise, "the shared module shows negative interference here.",
                               "sharing helps here (positive transfer), against the claim.", 0.01, " at this budget."));
  r.findings.push_back("Learned soft routing " + fmt(avg[2]) + ", Polytropon " + fmt(avg[3]) +
                       " (best of the fixed ones " + fmt(std::max(avg[0], avg[1])) + ").");
  return r;
}

}  // namespace modula::experiment::detail
