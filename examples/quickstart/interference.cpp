// Quickstart experiment (b).
#include "modula/composition/registry.h"
#include "quickstart/common.h"

namespace modula::train::quickstart_detail {

// (b) Multi-task interference: tasks learned jointly by one shared module (batches mix the
// tasks, each marked in the text) vs a module per task (batches of one task, its module on).
ExperimentResult interference(Context& c) {
  const auto& o = c.o;
  auto tasks = parse_tasks(o.interference_tasks());
  // Every method is told the task the same way, by its markers in the text: the tasks are
  // compatible (one model can learn them all), so no method's result is decided by the design.
  auto evals = eval_sets(o, tasks, true);
  const size_t K = tasks.size();
  ExperimentResult e;
  e.key = "interference";
  e.title = "(b) multi-task interference";
  e.claim = "Tasks learned jointly interfere in shared parameters; per-task modules isolate them.";
  e.tasks = o.interference_tasks();
  auto all = iota_ids(K);
  const int64_t total_steps = o.finetune_steps() * static_cast<int64_t>(K);  // equal budget

  auto finish = [&](MethodResult& r, const std::function<void(size_t)>& select, Backbone& model, Clock::time_point t0) {
    std::vector<double> row(K);
    for (size_t j = 0; j < K; ++j) {
      select(j);
      row[j] = accuracy(model, evals[j]);
    }
    r.stages = {"joint"};
    r.accuracy = {row};
    r.final_accuracy = mean(row);
    r.seconds = since(t0);
  };

  {  // per-task LoRA: each task's module trained on its own task only (same total steps)
    auto t0 = Clock::now();
    c.say(" per-task LoRA: " + std::to_string(K) + " modules, one per task");
    auto model = copy_backbone(*c.pretrained);
    freeze_backbone(*model);
    std::vector<Adapter> modules;
    int64_t params = 0;
    for (size_t k = 0; k < K; ++k) {
      modules.push_back(add_adapter(*model, lora_config(o), module_name(tasks[k].name)));
      params += count(modules.back().parameters());
    }
    auto select = [&modules](size_t j) {
      for (size_t i = 0; i < modules.size(); ++i) modules[i].set_enabled(i == j);
    };
    MethodResult r;
    r.method = "per-task LoRA";
    r.loss.name = r.method;
    r.trainable_parameters = params;
    r.active_parameters = count(modules[0].parameters());
    for (size_t k = 0; k < K; ++k) {
      select(k);
      std::vector<int64_t> ids{static_cast<int64_t>(k)};
      fit(
          *model, modules[k].parameters(),
          [&] { return c.sampler.sample(tasks, ids, o.batch_size(), Split::Train, true); }, o.finetune_steps(),
          o.module_lr(), o.log_every(), r.loss, "per-task LoRA/" + tasks[k].name, c.progress);
    }
    finish(r, select, *model, t0);
    e.methods.push_back(std::move(r));
  }
  auto shared = [&](const std::string& name, int64_t rank) {
    auto t0 = Clock::now();
    c.say(" " + name + ": one module, batches mixing every task");
    auto model = copy_backbone(*c.pretrained);
    freeze_backbone(*model);
    auto config = lora_config(o);
    config["r"] = rank;
    config["lora_alpha"] =
        o.lora_alpha() * static_cast<double>(rank) / static_cast<double>(o.lora_r());  // same scaling
    auto a = add_adapter(*model, config, "shared");
    MethodResult r;
    r.method = name;
    r.loss.name = name;
    r.trainable_parameters = count(a.parameters());
    r.active_parameters = r.trainable_parameters;
    fit(
        *model, a.parameters(), [&] { return c.sampler.sample(tasks, all, o.batch_size(), Split::Train, true); },
        total_steps, o.module_lr(), o.log_every(), r.loss, name, c.progress);
    finish(
        r, [](size_t) {}, *model, t0);
    e.methods.push_back(std::move(r));
  };
  shared("shared LoRA", o.lora_r());
  shared("shared LoRA (" + std::to_string(K) + "x rank)", o.lora_r() * static_cast<int64_t>(K));
  return e;
}

}  // namespace modula::train::quickstart_detail
