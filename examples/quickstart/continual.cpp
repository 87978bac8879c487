// Quickstart experiment (a).
#include "modula/composition/registry.h"
#include "modula/util/fs.h"
#include "quickstart/common.h"

namespace modula::train::quickstart_detail {

// (a) Continual learning: train tasks in order; evaluate every seen task after each.
ExperimentResult continual(Context& c) {
  const auto& o = c.o;
  auto tasks = parse_tasks(o.continual_tasks());
  // Every method is told the task the same way, by its markers in the text: the tasks are
  // compatible (one model can learn them all), so no method's result is decided by the design.
  auto evals = eval_sets(o, tasks, true);
  ExperimentResult e;
  e.key = "continual";
  e.title = "(a) continual learning";
  e.claim =
      "Per-task modules on a frozen backbone keep every earlier task's accuracy; updating shared weights forgets.";
  e.tasks = o.continual_tasks();
  const size_t K = tasks.size();

  // How each method trains stage k and evaluates task j.
  struct Method {
    std::string name;
    std::shared_ptr<Backbone> model;
    std::function<std::vector<torch::Tensor>(size_t k)> params_for;
    std::function<void(size_t j)> select;  // set the model up for task j
    double lr;
  };
  auto run = [&](Method m) {
    auto t0 = Clock::now();
    MethodResult r;
    r.method = m.name;
    r.loss.name = m.name;
    std::vector<torch::Tensor> trained;
    for (size_t k = 0; k < K; ++k) {
      c.say(" " + m.name + ": task " + std::to_string(k + 1) + "/" + std::to_string(K) + " " + tasks[k].name);
      auto params = m.params_for(k);
      for (auto& p : params) trained.push_back(p);
      m.select(k);
      std::vector<int64_t> ids{static_cast<int64_t>(k)};
      fit(
          *m.model, params, [&] { return c.sampler.sample(tasks, ids, o.batch_size(), Split::Train, true); },
          o.finetune_steps(), m.lr, o.log_every(), r.loss, m.name + "/" + tasks[k].name, c.progress);
      std::vector<double> row(K, NAN);
      for (size_t j = 0; j <= k; ++j) {
        m.select(j);
        row[j] = accuracy(*m.model, evals[j]);
      }
      r.stages.push_back("after " + tasks[k].name);
      r.accuracy.push_back(row);
    }
    // Distinct tensors only (a shared module is returned at every stage).
    std::vector<torch::Tensor> unique;
    for (auto& p : trained) {
      bool seen = false;
      for (auto& q : unique) seen = seen || q.is_same(p);
      if (!seen) unique.push_back(p);
    }
    r.trainable_parameters = count(unique);
    r.active_parameters = count(m.params_for(K - 1));  // one task's module (or all shared weights)
    r.final_accuracy = mean(r.accuracy.back());
    r.forgetting = average_forgetting(r.accuracy);
    r.seconds = since(t0);
    e.methods.push_back(std::move(r));
  };

  {  // per-task LoRA: a new module per task, backbone frozen, only the task's module on
    auto model = copy_backbone(*c.pretrained);
    freeze_backbone(*model);
    std::vector<Adapter> modules;
    for (size_t k = 0; k < K; ++k) modules.push_back(add_adapter(*model, lora_config(o), module_name(tasks[k].name)));
    auto select = [&modules](size_t j) {
      for (size_t i = 0; i < modules.size(); ++i) modules[i].set_enabled(i == j);
    };
    run({"per-task LoRA", model, [&](size_t k) { return modules[k].parameters(); }, select, o.module_lr()});
    if (!o.output().empty())
      for (auto& a : modules) save_adapter(a, fs::join(o.output(), "modules/" + a.name));
  }
  {  // one shared LoRA trained on each task in turn
    auto model = copy_backbone(*c.pretrained);
    freeze_backbone(*model);
    auto shared = add_adapter(*model, lora_config(o), "shared");
    run({"shared LoRA", model, [&](size_t) { return shared.parameters(); }, [](size_t) {}, o.module_lr()});
  }
  {  // full fine-tuning of the backbone on each task in turn
    auto model = copy_backbone(*c.pretrained);
    run({"full fine-tuning", model, [&](size_t) { return backbone_parameters(*model); }, [](size_t) {}, o.full_lr()});
  }
  return e;
}

}  // namespace modula::train::quickstart_detail
