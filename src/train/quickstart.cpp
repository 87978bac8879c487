// The quickstart experiments: pretraining, (a) continual learning, (b) multi-task
// interference, on the compositional sequence tasks.
#include "modula/train/quickstart.h"

#include "modula/backbone/registry.h"
#include "modula/composition/moe_lora.h"
#include "modula/composition/poly_lora.h"
#include "modula/modules/adapter.h"
#include "modula/util/fs.h"

#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <numeric>
#include <stdexcept>

namespace modula::train {
namespace {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

[[noreturn]] void bad(const std::string& msg) { throw std::invalid_argument("[quickstart] " + msg); }

double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

std::string fmt(double v, int precision = 3) {
  if (std::isnan(v)) return "–";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.*f", precision, v);
  return buf;
}

// The tiny Llama: HF config built in code, random init.
std::shared_ptr<Backbone> build_backbone(const QuickstartOptions& o, const SymbolVocab& vocab, int64_t max_len) {
  json c = {{"architectures", {"LlamaForCausalLM"}},
            {"model_type", "llama"},
            {"vocab_size", vocab.size()},
            {"hidden_size", o.hidden_size()},
            {"intermediate_size", o.intermediate_size()},
            {"num_hidden_layers", o.num_layers()},
            {"num_attention_heads", o.num_heads()},
            {"num_key_value_heads", o.num_heads()},
            {"hidden_act", "silu"},
            {"max_position_embeddings", std::max<int64_t>(64, max_len)},
            {"rms_norm_eps", 1e-6},
            {"rope_theta", 10000.0},
            {"tie_word_embeddings", false},
            {"initializer_range", 0.02},
            {"pad_token_id", SymbolVocab::pad},
            {"bos_token_id", SymbolVocab::bos},
            {"eos_token_id", SymbolVocab::eos}};
  auto config = io::parse_hf_config(c, "quickstart backbone");
  auto model = create_backbone(config);
  init_weights(*model, 0.02, o.seed());
  return model;
}

// A fresh backbone with the weights of `src` (each method starts from the same pretrained one).
std::shared_ptr<Backbone> copy_backbone(Backbone& src) {
  auto dst = create_backbone(src.config());
  torch::NoGradGuard no_grad;
  auto from = src.named_parameters();
  for (auto& p : dst->named_parameters()) p.value().copy_(from[p.key()]);
  auto from_buffers = src.named_buffers();
  for (auto& b : dst->named_buffers()) b.value().copy_(from_buffers[b.key()]);
  return dst;
}

torch::Tensor logits_of(Backbone& model, const torch::Tensor& input_ids) {
  BackboneInput in;
  in.input_ids = input_ids;
  return model.forward(in).logits;
}

int64_t count(const std::vector<torch::Tensor>& params) {
  int64_t n = 0;
  for (const auto& p : params) n += p.numel();
  return n;
}

std::vector<torch::Tensor> backbone_parameters(Backbone& model) {
  std::vector<torch::Tensor> ps;
  for (auto& p : model.named_parameters())
    if (p.key().find(".adapters.") == std::string::npos) ps.push_back(p.value());
  return ps;
}

// A parameter group with its peak learning rate.
struct Group {
  std::vector<torch::Tensor> params;
  double lr;
};

// Runs `steps` AdamW steps on `groups` over batches from `draw`: linear warmup (5%), then
// cosine decay to 10% of each group's lr; gradients clipped to norm 1. The loss is the
// answer loss plus `extra()` when given (router losses); `curve` gets the answer loss,
// `extra_curve` (optional) the extra term.
void fit(Backbone& model, std::vector<Group> groups, const std::function<TaskBatch()>& draw, int64_t steps,
         int64_t log_every, LossCurve& curve, const std::string& phase, const Progress& progress,
         const std::function<torch::Tensor()>& extra = {}, LossCurve* extra_curve = nullptr) {
  std::vector<torch::Tensor> all;
  std::vector<torch::optim::OptimizerParamGroup> param_groups;
  for (auto& g : groups) {
    for (auto& p : g.params) {
      p.set_requires_grad(true);
      all.push_back(p);
    }
    param_groups.emplace_back(g.params, std::make_unique<torch::optim::AdamWOptions>(torch::optim::AdamWOptions(g.lr).weight_decay(0.0)));
  }
  torch::optim::AdamW opt(param_groups, torch::optim::AdamWOptions(groups.front().lr).weight_decay(0.0));
  model.train();
  int64_t warmup = std::max<int64_t>(1, steps / 20), base = curve.step.empty() ? 0 : static_cast<int64_t>(curve.step.back());
  double window = 0, extra_window = 0;
  int64_t in_window = 0;
  for (int64_t step = 0; step < steps; ++step) {
    double progress_frac = static_cast<double>(step - warmup) / static_cast<double>(std::max<int64_t>(1, steps - warmup));
    double factor = step < warmup ? static_cast<double>(step + 1) / static_cast<double>(warmup)
                                  : 0.1 + 0.45 * (1.0 + std::cos(M_PI * progress_frac));
    for (size_t i = 0; i < groups.size(); ++i)
      static_cast<torch::optim::AdamWOptions&>(opt.param_groups()[i].options()).lr(groups[i].lr * factor);
    auto batch = draw();
    auto logits = logits_of(model, batch.input_ids);
    auto loss = answer_loss(logits, batch.labels);
    auto total = loss;
    if (extra) {
      auto e = extra();
      extra_window += e.item<double>();
      total = total + e;
    }
    opt.zero_grad();
    total.backward();
    torch::nn::utils::clip_grad_norm_(all, 1.0);
    opt.step();
    window += loss.item<double>();
    if (++in_window == log_every || step + 1 == steps) {
      curve.step.push_back(static_cast<double>(base + step + 1));
      curve.loss.push_back(window / static_cast<double>(in_window));
      if (extra_curve) {
        extra_curve->step.push_back(curve.step.back());
        extra_curve->loss.push_back(extra_window / static_cast<double>(in_window));
      }
      if (progress && (step + 1) % (log_every * 8) == 0)
        progress("  " + phase + " step " + std::to_string(step + 1) + "/" + std::to_string(steps) + " loss " +
                 fmt(curve.loss.back(), 4));
      window = 0;
      extra_window = 0;
      in_window = 0;
    }
  }
  for (auto& p : all) p.set_requires_grad(false);
  model.eval();
}

void fit(Backbone& model, std::vector<torch::Tensor> params, const std::function<TaskBatch()>& draw, int64_t steps, double lr,
         int64_t log_every, LossCurve& curve, const std::string& phase, const Progress& progress) {
  fit(model, {Group{std::move(params), lr}}, draw, steps, log_every, curve, phase, progress);
}

// Held-out exact-match accuracy of the model as it is (its enabled modules) on one batch.
double accuracy(Backbone& model, const TaskBatch& eval) {
  torch::NoGradGuard no_grad;
  model.eval();
  auto logits = logits_of(model, eval.input_ids);
  return exact_match(logits, eval.labels).to(torch::kDouble).mean().item<double>();
}

json lora_config(const QuickstartOptions& o) {
  return {{"peft_type", "LORA"}, {"r", o.lora_r()}, {"lora_alpha", o.lora_alpha()}, {"target_modules", "all-linear"}};
}

// Module names cannot contain dots; task names may contain '+'.
std::string module_name(const std::string& task) {
  std::string n = task;
  for (auto& ch : n)
    if (ch == '+' || ch == '.') ch = '_';
  return n;
}

double mean(const std::vector<double>& v) {
  return v.empty() ? 0.0 : std::accumulate(v.begin(), v.end(), 0.0) / static_cast<double>(v.size());
}

std::vector<int64_t> iota_ids(size_t n) {
  std::vector<int64_t> ids(n);
  std::iota(ids.begin(), ids.end(), 0);
  return ids;
}

struct Context {
  const QuickstartOptions& o;
  const Progress& progress;
  TaskSampler& sampler;
  std::shared_ptr<Backbone> pretrained;
  void say(const std::string& s) const {
    if (progress) progress(s);
  }
};

// Per-task evaluation sets (held-out inputs), the same for every method.
std::vector<TaskBatch> eval_sets(const QuickstartOptions& o, const std::vector<Task>& tasks, bool with_marker) {
  TaskSampler s(o.data(), o.seed() + 7919);
  std::vector<TaskBatch> sets;
  for (size_t k = 0; k < tasks.size(); ++k)
    sets.push_back(s.sample(tasks, {static_cast<int64_t>(k)}, o.eval_examples(), Split::Heldout, with_marker));
  return sets;
}

// (a) Continual learning: train tasks in order; evaluate every seen task after each.
ExperimentResult continual(Context& c) {
  const auto& o = c.o;
  auto tasks = parse_tasks(o.continual_tasks());
  auto evals = eval_sets(o, tasks, false);
  ExperimentResult e;
  e.key = "continual";
  e.title = "(a) continual learning";
  e.claim = "Per-task modules on a frozen backbone keep every earlier task's accuracy; updating shared weights forgets.";
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
      fit(*m.model, params, [&] { return c.sampler.sample(tasks, ids, o.batch_size(), Split::Train, false); },
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

// (b) Multi-task interference: conflicting tasks learned jointly by one shared module
// (batches mix the tasks) vs a module per task (batches of one task, its module on).
ExperimentResult interference(Context& c) {
  const auto& o = c.o;
  auto tasks = parse_tasks(o.interference_tasks());
  auto evals = eval_sets(o, tasks, false);
  const size_t K = tasks.size();
  ExperimentResult e;
  e.key = "interference";
  e.title = "(b) multi-task interference";
  e.claim = "Tasks that conflict interfere in shared parameters; per-task modules isolate them.";
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
      fit(*model, modules[k].parameters(),
          [&] { return c.sampler.sample(tasks, ids, o.batch_size(), Split::Train, false); }, o.finetune_steps(),
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
    config["lora_alpha"] = o.lora_alpha() * static_cast<double>(rank) / static_cast<double>(o.lora_r());  // same scaling
    auto a = add_adapter(*model, config, "shared");
    MethodResult r;
    r.method = name;
    r.loss.name = name;
    r.trainable_parameters = count(a.parameters());
    r.active_parameters = r.trainable_parameters;
    fit(*model, a.parameters(), [&] { return c.sampler.sample(tasks, all, o.batch_size(), Split::Train, false); },
        total_steps, o.module_lr(), o.log_every(), r.loss, name, c.progress);
    finish(r, [](size_t) {}, *model, t0);
    e.methods.push_back(std::move(r));
  };
  shared("shared LoRA", o.lora_r());
  shared("shared LoRA (" + std::to_string(K) + "x rank)", o.lora_r() * static_cast<int64_t>(K));
  return e;
}

// Parameter values, to restore a module before adapting it to another task.
std::vector<torch::Tensor> snapshot(const std::vector<torch::Tensor>& params) {
  std::vector<torch::Tensor> copy;
  for (const auto& p : params) copy.push_back(p.detach().clone());
  return copy;
}
void restore(const std::vector<torch::Tensor>& params, const std::vector<torch::Tensor>& values) {
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < params.size(); ++i) params[i].copy_(values[i]);
}

// (c) Systematic generalisation: train on some compositions of the skills (task id as
// metadata), then learn each held-out composition of seen skills from a few examples.
ExperimentResult generalisation(Context& c) {
  const auto& o = c.o;
  auto train = parse_tasks(o.generalisation_tasks());
  auto held = parse_tasks(o.heldout_tasks());
  const size_t K = train.size(), H = held.size();
  std::vector<Task> tasks = train;
  tasks.insert(tasks.end(), held.begin(), held.end());  // ids: training 0..K-1, held-out K..K+H-1
  auto evals = eval_sets(o, tasks, false);
  // The few examples of each held-out task: one fixed set from the training split.
  TaskSampler few(o.data(), o.seed() + 104729);
  std::vector<TaskBatch> shots;
  for (size_t h = 0; h < H; ++h)
    shots.push_back(few.sample(tasks, {static_cast<int64_t>(K + h)}, o.few_shot_examples(), Split::Train, false));
  ExperimentResult e;
  e.key = "generalisation";
  e.title = "(c) systematic generalisation";
  e.claim = "Skills shared across tasks with a learned task-to-skill routing recombine: a held-out composition of seen "
            "skills needs only a new routing, learned from " + std::to_string(o.few_shot_examples()) + " examples.";
  e.tasks = o.generalisation_tasks();
  e.tasks.insert(e.tasks.end(), o.heldout_tasks().begin(), o.heldout_tasks().end());
  e.heldout_tasks = o.heldout_tasks();
  e.notes.push_back("Training tasks: " + std::to_string(o.generalisation_steps()) + " multi-task steps per method (per-task "
                    "LoRA: split evenly over its tasks). Held-out tasks: " + std::to_string(o.adapt_steps()) +
                    " full-batch steps on the same " + std::to_string(o.few_shot_examples()) +
                    " examples for every method; evaluation on held-out inputs. Polytropon (n_skills " +
                    std::to_string(o.poly_skills()) + ", rank " + std::to_string(o.lora_r()) +
                    ", routing lr " + fmt(o.routing_lr(), 2) + ") adapts only the new task's routing logits (MHR-z); "
                    "the uniform-routing row evaluates the held-out tasks with their untrained routing (σ(≈0): every "
                    "skill weighted equally, MHR-μ's allocation), no adaptation.");
  auto train_ids = iota_ids(K);
  auto mixed = [&] { return c.sampler.sample(tasks, train_ids, o.batch_size(), Split::Train, false); };
  auto start = [&](const std::string& name) {
    MethodResult r;
    r.method = name;
    r.loss.name = name;
    r.stages = {"final"};
    r.accuracy = {std::vector<double>(K + H, NAN)};
    return r;
  };
  auto finish = [&](MethodResult& r, Clock::time_point t0) {
    const auto& row = r.accuracy[0];
    r.final_accuracy = mean(std::vector<double>(row.begin(), row.begin() + static_cast<long>(K)));
    r.heldout_accuracy = mean(std::vector<double>(row.begin() + static_cast<long>(K), row.end()));
    r.seconds = since(t0);
  };

  {  // Polytropon: skills + routing trained jointly, then MHR-z per held-out task
    auto t0 = Clock::now();
    c.say(" Polytropon: " + std::to_string(o.poly_skills()) + " skills with task-to-skill routing, then MHR-z");
    auto model = copy_backbone(*c.pretrained);
    freeze_backbone(*model);
    auto ctx = std::make_shared<RoutingContext>();
    json config = {{"peft_type", "POLY"},          {"r", o.lora_r()},  {"n_tasks", static_cast<int64_t>(K + H)},
                   {"n_skills", o.poly_skills()}, {"n_splits", 1},    {"target_modules", "all-linear"}};
    auto poly = add_poly_adapter(*model, config, ctx, "poly");
    std::vector<torch::Tensor> skills, routing;
    for (auto& m : poly.modules) {
      auto p = std::dynamic_pointer_cast<PolyLoraImpl>(m.module);
      skills.push_back(p->poly_lora_A);
      skills.push_back(p->poly_lora_B);
      routing.push_back(p->poly_router->module_logits);
    }
    auto r = start("Polytropon + MHR-z");
    r.trainable_parameters = count(poly.parameters());
    // One example mixes every skill of a site with its task's routing row.
    r.active_parameters = count(skills) + static_cast<int64_t>(poly.modules.size()) * o.poly_skills();
    auto routed = [&](const TaskBatch& b) {
      ctx->set("task", b.task_ids);
      return b;
    };
    fit(*model, {Group{skills, o.module_lr()}, Group{routing, o.routing_lr()}}, [&] { return routed(mixed()); },
        o.generalisation_steps(), o.log_every(), r.loss, "Polytropon", c.progress);
    auto uniform = start("Polytropon, uniform routing (no adaptation)");
    uniform.trainable_parameters = r.trainable_parameters;
    uniform.active_parameters = r.active_parameters;
    uniform.loss = r.loss;
    uniform.loss.name = uniform.method;
    for (size_t j = 0; j < K + H; ++j) {
      routed(evals[j]);
      uniform.accuracy[0][j] = accuracy(*model, evals[j]);
      if (j < K) r.accuracy[0][j] = uniform.accuracy[0][j];
    }
    auto z = mhr_z(poly);  // skills frozen; only the routing logits train
    for (size_t h = 0; h < H; ++h) {
      fit(*model, {Group{z, o.routing_lr()}}, [&] { return routed(shots[h]); }, o.adapt_steps(), o.log_every(), r.loss,
          "MHR-z/" + held[h].name, c.progress);
      routed(evals[K + h]);
      r.accuracy[0][K + h] = accuracy(*model, evals[K + h]);
    }
    finish(uniform, t0);
    finish(r, t0);
    e.methods.push_back(std::move(r));
    e.methods.push_back(std::move(uniform));
  }
  {  // one shared LoRA on the mixed training tasks, fine-tuned on each held-out task's examples
    auto t0 = Clock::now();
    c.say(" shared LoRA: one module on every training task, then fine-tuned on the few examples");
    auto model = copy_backbone(*c.pretrained);
    freeze_backbone(*model);
    auto a = add_adapter(*model, lora_config(o), "shared");
    auto r = start("shared LoRA");
    r.trainable_parameters = r.active_parameters = count(a.parameters());
    fit(*model, a.parameters(), mixed, o.generalisation_steps(), o.module_lr(), o.log_every(), r.loss, "shared LoRA", c.progress);
    for (size_t j = 0; j < K; ++j) r.accuracy[0][j] = accuracy(*model, evals[j]);
    auto trained = snapshot(a.parameters());
    for (size_t h = 0; h < H; ++h) {
      restore(a.parameters(), trained);
      fit(*model, a.parameters(), [&] { return shots[h]; }, o.adapt_steps(), o.module_lr(), o.log_every(), r.loss,
          "shared LoRA/" + held[h].name, c.progress);
      r.accuracy[0][K + h] = accuracy(*model, evals[K + h]);
    }
    finish(r, t0);
    e.methods.push_back(std::move(r));
  }
  {  // a LoRA per task: training tasks on their own data, held-out tasks on their few examples
    auto t0 = Clock::now();
    c.say(" per-task LoRA: a new module per task, held-out ones from the few examples");
    auto model = copy_backbone(*c.pretrained);
    freeze_backbone(*model);
    std::vector<Adapter> modules;
    for (const auto& t : tasks) modules.push_back(add_adapter(*model, lora_config(o), module_name(t.name)));
    auto select = [&modules](size_t j) {
      for (size_t i = 0; i < modules.size(); ++i) modules[i].set_enabled(i == j);
    };
    auto r = start("per-task LoRA");
    r.trainable_parameters = count(modules[0].parameters()) * static_cast<int64_t>(K + H);
    r.active_parameters = count(modules[0].parameters());
    const int64_t per_task = std::max<int64_t>(1, o.generalisation_steps() / static_cast<int64_t>(K));
    for (size_t j = 0; j < K + H; ++j) {
      select(j);
      std::vector<int64_t> ids{static_cast<int64_t>(j)};
      if (j < K)
        fit(*model, modules[j].parameters(), [&] { return c.sampler.sample(tasks, ids, o.batch_size(), Split::Train, false); },
            per_task, o.module_lr(), o.log_every(), r.loss, "per-task LoRA/" + tasks[j].name, c.progress);
      else
        fit(*model, modules[j].parameters(), [&] { return shots[j - K]; }, o.adapt_steps(), o.module_lr(), o.log_every(),
            r.loss, "per-task LoRA/" + tasks[j].name, c.progress);
      r.accuracy[0][j] = accuracy(*model, evals[j]);
    }
    finish(r, t0);
    e.methods.push_back(std::move(r));
  }
  return e;
}

// (d) Mixture of LoRA experts: multi-task training without task ids (the task's skill
// markers are in the text, so a token-level router can tell the tasks apart).
ExperimentResult moe(Context& c) {
  const auto& o = c.o;
  auto tasks = parse_tasks(o.moe_tasks());
  auto evals = eval_sets(o, tasks, true);
  const size_t K = tasks.size();
  const int64_t M = o.moe_experts(), k = o.moe_k(), r0 = o.lora_r();
  ExperimentResult e;
  e.key = "moe";
  e.title = "(d) mixture of LoRA experts";
  e.claim = "Experts with learned top-k routing add capacity at the active compute of one module; compared with one "
            "module of the same active size and one of the same total size.";
  e.tasks = o.moe_tasks();
  e.notes.push_back(std::to_string(o.moe_steps()) + " steps per method on batches mixing every task, skill markers in "
                    "the text, no task id. MoE: " + std::to_string(M) + " LoRA experts of rank " + std::to_string(r0) +
                    " per linear site, token-level top-" + std::to_string(k) + " routing, training loss + router losses "
                    "(load balancing α = " + fmt(o.load_balance_coef(), 3) + ", z-loss β = 0.001). Active params: router + " +
                    std::to_string(k) + "/" + std::to_string(M) + " of the experts.");
  auto all = iota_ids(K);
  auto ctx = std::make_shared<RoutingContext>();
  auto masked = [&](const TaskBatch& b) {
    ctx->set_mask(b.input_ids.ne(SymbolVocab::pad));  // padding out of the router losses
    return b;
  };
  auto draw = [&] { return masked(c.sampler.sample(tasks, all, o.batch_size(), Split::Train, true)); };
  auto finish = [&](MethodResult& r, Backbone& model, Clock::time_point t0) {
    std::vector<double> row(K);
    for (size_t j = 0; j < K; ++j) row[j] = accuracy(model, masked(evals[j]));
    r.stages = {"multi-task"};
    r.accuracy = {row};
    r.final_accuracy = mean(row);
    r.seconds = since(t0);
  };
  {
    auto t0 = Clock::now();
    std::string name = "MoE LoRA (" + std::to_string(M) + "x r" + std::to_string(r0) + ", top-" + std::to_string(k) + ")";
    c.say(" " + name + ": token-level routing with load balancing");
    auto model = copy_backbone(*c.pretrained);
    freeze_backbone(*model);
    auto layers = add_moe_lora(*model, {{"target_modules", "all-linear"}},
                               MoeLoraOptions(M).r(r0).alpha(o.lora_alpha()).k(k).load_balance_coef(o.load_balance_coef()).context(ctx));
    std::vector<torch::Tensor> params;
    int64_t router = 0;
    for (auto& [path, layer] : layers) {
      for (auto& p : layer->parameters()) params.push_back(p);
      router += count(layer->router->parameters());
    }
    MethodResult r;
    r.method = name;
    r.loss.name = name;
    r.aux.name = name;
    r.trainable_parameters = count(params);
    r.active_parameters = router + (r.trainable_parameters - router) * k / M;
    fit(*model, {Group{params, o.module_lr()}}, draw, o.moe_steps(), o.log_every(), r.loss, name, c.progress,
        [&] { return collect_aux_loss(*model); }, &r.aux);
    r.aux_loss = r.aux.loss.back();
    finish(r, *model, t0);
    e.methods.push_back(std::move(r));
  }
  for (int64_t rank : {r0, M * r0}) {
    auto t0 = Clock::now();
    std::string name = "LoRA r" + std::to_string(rank) + (rank == r0 ? " (same active)" : " (same params)");
    c.say(" " + name);
    auto model = copy_backbone(*c.pretrained);
    freeze_backbone(*model);
    auto config = lora_config(o);
    config["r"] = rank;
    config["lora_alpha"] = o.lora_alpha() * static_cast<double>(rank) / static_cast<double>(r0);  // same scaling
    auto a = add_adapter(*model, config, "lora");
    MethodResult r;
    r.method = name;
    r.loss.name = name;
    r.trainable_parameters = r.active_parameters = count(a.parameters());
    fit(*model, a.parameters(), draw, o.moe_steps(), o.module_lr(), o.log_every(), r.loss, name, c.progress);
    finish(r, *model, t0);
    e.methods.push_back(std::move(r));
  }
  return e;
}

}  // namespace

QuickstartOptions QuickstartOptions::tiny() {
  return QuickstartOptions()
      .pretrain_steps(150)
      .finetune_steps(40)
      .batch_size(32)
      .eval_examples(64)
      .log_every(10)
      .hidden_size(32)
      .intermediate_size(64)
      .num_heads(2)
      .module_lr(1e-2)
      .data(SequenceTaskOptions().num_symbols(4).min_length(1).max_length(3))
      .pretrain_tasks({"reverse", "shift"})
      .continual_tasks({"reverse", "shift"})
      .interference_tasks({"reverse", "shift"})
      .generalisation_tasks({"reverse+shift", "sort"})
      .heldout_tasks({"sort+reverse"})
      .generalisation_steps(40)
      .few_shot_examples(16)
      .adapt_steps(10)
      .moe_tasks({"reverse+shift", "sort"})
      .moe_steps(30);
}

QuickstartOptions QuickstartOptions::full() {
  return QuickstartOptions()
      .pretrain_steps(3000)
      .finetune_steps(400)
      .hidden_size(128)
      .intermediate_size(256)
      .eval_examples(1024)
      .continual_tasks({"shift+duplicate", "reverse+shift", "sort", "duplicate+reverse", "sort+shift"})
      .interference_tasks({"reverse", "shift", "sort", "reverse+shift"})
      .generalisation_steps(800)
      .adapt_steps(100)
      .moe_steps(800);
}

void QuickstartOptions::validate() const {
  data_.validate();
  auto positive = [](int64_t v, const char* name) {
    if (v < 1) bad(std::string(name) + " must be >= 1, got " + std::to_string(v));
  };
  positive(hidden_size_, "hidden_size");
  positive(num_layers_, "num_layers");
  positive(num_heads_, "num_heads");
  positive(intermediate_size_, "intermediate_size");
  positive(pretrain_steps_, "pretrain_steps");
  positive(finetune_steps_, "finetune_steps");
  positive(lora_r_, "lora_r");
  positive(batch_size_, "batch_size");
  positive(eval_examples_, "eval_examples");
  positive(log_every_, "log_every");
  if (hidden_size_ % num_heads_ != 0)
    bad("hidden_size (" + std::to_string(hidden_size_) + ") must be divisible by num_heads (" + std::to_string(num_heads_) + ")");
  if (!(pretrain_lr_ > 0) || !(module_lr_ > 0) || !(full_lr_ > 0)) bad("learning rates must be > 0");
  if (pretrain_tasks_.empty()) bad("pretrain_tasks is empty");
  for (const auto& t : parse_tasks(pretrain_tasks_))
    if (t.skills.size() != 1) bad("pretrain_tasks are primitive skills; '" + t.name + "' composes several");
  positive(generalisation_steps_, "generalisation_steps");
  positive(few_shot_examples_, "few_shot_examples");
  positive(adapt_steps_, "adapt_steps");
  positive(poly_skills_, "poly_skills");
  positive(moe_experts_, "moe_experts");
  positive(moe_steps_, "moe_steps");
  if (moe_k_ < 1 || moe_k_ > moe_experts_)
    bad("moe_k must be in [1, moe_experts = " + std::to_string(moe_experts_) + "], got " + std::to_string(moe_k_));
  if (!(routing_lr_ > 0)) bad("routing_lr must be > 0");
  if (load_balance_coef_ < 0) bad("load_balance_coef must be >= 0");
  const std::vector<std::string> known{"continual", "interference", "generalisation", "moe"};
  const std::string choices = "(choose from: continual, interference, generalisation, moe)";
  if (experiments_.empty()) bad("experiments is empty " + choices);
  for (const auto& x : experiments_)
    if (std::find(known.begin(), known.end(), x) == known.end()) bad("unknown experiment '" + x + "' " + choices);
  if (continual_tasks_.size() < 2) bad("continual_tasks needs at least 2 tasks");
  if (interference_tasks_.size() < 2) bad("interference_tasks needs at least 2 tasks");
  if (generalisation_tasks_.empty()) bad("generalisation_tasks is empty");
  if (heldout_tasks_.empty()) bad("heldout_tasks is empty");
  if (moe_tasks_.size() < 2) bad("moe_tasks needs at least 2 tasks");
  for (const auto* list : {&continual_tasks_, &interference_tasks_, &generalisation_tasks_, &heldout_tasks_, &moe_tasks_})
    for (size_t i = 0; i < list->size(); ++i) {
      parse_task((*list)[i]);
      for (size_t j = 0; j < i; ++j)
        if ((*list)[j] == (*list)[i]) bad("task '" + (*list)[i] + "' is listed twice");
    }
  // Held-out tasks: new compositions of seen skills, and not a training task in disguise
  // (shift commutes with every skill: "duplicate+shift" computes "shift+duplicate").
  auto train = parse_tasks(generalisation_tasks_);
  for (const auto& h : parse_tasks(heldout_tasks_)) {
    for (Skill s : h.skills) {
      bool seen = false;
      for (const auto& t : train) seen = seen || std::find(t.skills.begin(), t.skills.end(), s) != t.skills.end();
      if (!seen) bad("held-out task '" + h.name + "' uses skill '" + to_string(s) + "', which no generalisation_tasks entry trains");
    }
    for (const auto& t : train) {
      bool same = true;
      for (const std::vector<int64_t>& x : {std::vector<int64_t>{0, 2, 1}, {3, 1, 1, 0}, {1, 0, 2, 3, 1}})
        same = same && apply_task(h, x, 4) == apply_task(t, x, 4);
      if (same) bad("held-out task '" + h.name + "' computes the same function as training task '" + t.name + "'");
    }
  }
}

const MethodResult& ExperimentResult::method(const std::string& name) const {
  for (const auto& m : methods)
    if (m.method == name) return m;
  bad("experiment '" + key + "' has no method '" + name + "'");
}

double average_forgetting(const std::vector<std::vector<double>>& a) {
  if (a.size() < 2) return 0.0;
  size_t T = a.size() - 1;
  double sum = 0;
  for (size_t j = 0; j < T; ++j) {
    double best = -INFINITY;
    for (size_t t = j; t < T; ++t) best = std::max(best, a[t][j]);
    sum += best - a[T][j];  // max_{t<T} a[t][j] - a[T][j]
  }
  return sum / static_cast<double>(T);
}

Table QuickstartResult::summary_table() const {
  Table t{"modula quickstart: exact-match accuracy on held-out inputs",
          {"experiment", "method", "trainable params", "active params", "final accuracy", "held-out tasks", "forgetting",
           "seconds"},
          {},
          "final accuracy: mean over the (training) tasks at the end; held-out tasks: (c)'s compositions never trained "
          "on, learned from a few examples; forgetting: mean over earlier tasks of (best - final) accuracy; active "
          "params: the trained parameters one token's forward uses."};
  for (const auto& e : experiments)
    for (const auto& m : e.methods)
      t.rows.push_back({e.title, m.method, std::to_string(m.trainable_parameters), std::to_string(m.active_parameters),
                        fmt(m.final_accuracy), fmt(m.heldout_accuracy), fmt(m.forgetting), fmt(m.seconds, 1)});
  return t;
}

std::vector<Matrix> QuickstartResult::accuracy_matrices(const ExperimentResult& e) const {
  std::vector<Matrix> ms;
  for (const auto& m : e.methods) {
    Matrix x;
    x.title = e.title + ": " + m.method;
    x.row_labels = m.stages;
    x.col_labels = e.tasks;
    for (auto& label : x.col_labels)
      if (std::find(e.heldout_tasks.begin(), e.heldout_tasks.end(), label) != e.heldout_tasks.end()) label += " (held out)";
    x.values = m.accuracy;
    x.caption = "rows: training stage; columns: task; cells: held-out exact-match accuracy";
    ms.push_back(std::move(x));
  }
  return ms;
}

Report QuickstartResult::report() const {
  Report r("modula quickstart");
  r.paragraph("A tiny Llama (" + std::to_string(backbone_parameters) + " parameters, " + std::to_string(options.num_layers()) +
              " layers, hidden " + std::to_string(options.hidden_size()) +
              ") pretrained on compositional sequence tasks with a task marker, then fine-tuned on tasks whose "
              "identity is metadata only. Accuracy: exact match of the whole answer on held-out generated inputs. "
              "Seed " + std::to_string(options.seed()) + "; total " + fmt(seconds, 1) + " s.");
  r.add(summary_table());
  r.heading("Pretraining");
  r.add(LineChart{"pretraining loss (answer tokens)", "step", "loss", {{"pretraining", pretrain_loss.step, pretrain_loss.loss}}, true});
  Table pre{"held-out accuracy after pretraining (marker in the text)", {"task", "accuracy"}, {}, ""};
  for (const auto& [task, acc] : pretrain_accuracy) pre.rows.push_back({task, fmt(acc)});
  r.add(pre);
  for (const auto& e : experiments) {
    r.heading(e.title);
    r.paragraph(e.claim + " Tasks: " + [&] {
      std::string s;
      for (const auto& t : e.tasks) s += (s.empty() ? "" : ", ") + t;
      return s;
    }() + ".");
    LineChart chart{e.title + ": fine-tuning loss", "step", "loss", {}, true};
    for (const auto& m : e.methods) chart.series.push_back({m.method, m.loss.step, m.loss.loss});
    for (const auto& note : e.notes) r.paragraph(note);
    r.add(chart);
    LineChart aux{e.title + ": router loss (load balancing + z-loss)", "step", "loss", {}, false};
    for (const auto& m : e.methods)
      if (!m.aux.loss.empty()) aux.series.push_back({m.method, m.aux.step, m.aux.loss});
    if (!aux.series.empty()) r.add(aux);
    Table params{e.title + ": parameters and accuracy", {"method", "trainable params", "active params", "final accuracy", "held-out tasks"}, {}, ""};
    for (const auto& m : e.methods)
      params.rows.push_back({m.method, std::to_string(m.trainable_parameters), std::to_string(m.active_parameters),
                             fmt(m.final_accuracy), fmt(m.heldout_accuracy)});
    r.add(params);
    for (auto& m : accuracy_matrices(e)) r.add(m);
  }
  return r;
}

QuickstartResult run_quickstart(const QuickstartOptions& o, const Progress& progress) {
  o.validate();
#if defined(__GLIBC__)
  // Many small models' activations sit just above glibc's mmap threshold: every step would
  // map, fault in and unmap them. Keeping them on the heap makes the run 2-3x faster.
  mallopt(M_MMAP_THRESHOLD, 64 << 20);
  mallopt(M_TRIM_THRESHOLD, 256 << 20);
#endif
  auto t0 = Clock::now();
  torch::manual_seed(o.seed());  // LoRA A init draws from the global generator
  QuickstartResult result;
  result.options = o;
  TaskSampler sampler(o.data(), o.seed());
  auto pre_tasks = parse_tasks(o.pretrain_tasks());
  std::vector<Task> every = pre_tasks;
  for (auto& t : parse_tasks(o.continual_tasks())) every.push_back(t);
  for (const auto* list : {&o.interference_tasks(), &o.generalisation_tasks(), &o.heldout_tasks(), &o.moe_tasks()})
    for (auto& t : parse_tasks(*list)) every.push_back(t);
  auto model = build_backbone(o, sampler.vocab(), max_sequence_length(every, o.data(), true));
  result.backbone_parameters = count(model->parameters());
  Context c{o, progress, sampler, model};

  c.say("pretraining a tiny Llama (" + std::to_string(result.backbone_parameters) + " parameters) on " +
        std::to_string(pre_tasks.size()) + " skills with task markers, " + std::to_string(o.pretrain_steps()) + " steps");
  auto pre_ids = iota_ids(pre_tasks.size());
  result.pretrain_loss.name = "pretraining";
  fit(*model, model->parameters(), [&] { return sampler.sample(pre_tasks, pre_ids, o.batch_size(), Split::Train, true); },
      o.pretrain_steps(), o.pretrain_lr(), o.log_every(), result.pretrain_loss, "pretraining", progress);
  auto pre_evals = eval_sets(o, pre_tasks, true);
  std::string line;
  for (size_t k = 0; k < pre_tasks.size(); ++k) {
    double acc = accuracy(*model, pre_evals[k]);
    result.pretrain_accuracy[pre_tasks[k].name] = acc;
    line += " " + pre_tasks[k].name + " " + fmt(acc);
  }
  c.say(" held-out accuracy with marker:" + line);
  if (!o.output().empty()) save_backbone(*model, fs::join(o.output(), "backbone"));
  for (const auto& x : o.experiments()) {
    if (x == "continual") {
      c.say("(a) continual learning on " + std::to_string(o.continual_tasks().size()) + " tasks, no marker");
      result.experiments.push_back(continual(c));
    } else if (x == "interference") {
      c.say("(b) multi-task interference on " + std::to_string(o.interference_tasks().size()) + " conflicting tasks");
      result.experiments.push_back(interference(c));
    } else if (x == "generalisation") {
      c.say("(c) systematic generalisation: " + std::to_string(o.generalisation_tasks().size()) + " training compositions, " +
            std::to_string(o.heldout_tasks().size()) + " held out");
      result.experiments.push_back(generalisation(c));
    } else if (x == "moe") {
      c.say("(d) mixture of LoRA experts on " + std::to_string(o.moe_tasks().size()) + " tasks, no task id");
      result.experiments.push_back(moe(c));
    }
  }
  result.seconds = since(t0);
  if (!o.output().empty()) {
    result.output = o.output();
    result.report().write_html(fs::join(o.output(), "report.html"));
  }
  return result;
}

}  // namespace modula::train
