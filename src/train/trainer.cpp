// The trainer: stages (main / continual / full fine-tuning baseline) made of phases; each
// phase is an AdamW loop over sampled single-task batches with warmup + decay, gradient
// accumulation and clipping, periodic evaluation, early stopping and checkpoints.
//
// Every random choice is a function of (seed, phase, step): task sampling, data order
// (per task and epoch), MLM masking. With the optimizer state, data positions and torch's
// CPU RNG in the checkpoint, a resumed run repeats the uninterrupted one exactly.
#include "modula/train/trainer.h"

#include "modula/backbone/registry.h"
#include "modula/composition/apply_spec.h"
#include "modula/modules/module_folder.h"
#include "modula/routing/router.h"
#include "modula/train/checkpoint.h"
#include "modula/train/schedule.h"
#include "modula/util/compat.h"
#include "modula/util/fs.h"
#include "task_runtime.h"

#include <ATen/CPUGeneratorImpl.h>

#include <chrono>
#include <cmath>
#include <fstream>
#include <random>
#include <set>
#include <sstream>

namespace modula::train {
namespace {

using json = nlohmann::json;
using detail::TaskRuntime;

[[noreturn]] void fail(const std::string& msg) { throw TrainError("[train] " + msg); }

// SplitMix64 over a pair: independent streams per (seed, purpose, phase, step, ...).
uint64_t mix(uint64_t a, uint64_t b) {
  uint64_t z = a + 0x9e3779b97f4a7c15ULL * (b + 1);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}
uint64_t mix(std::initializer_list<uint64_t> xs) {
  uint64_t h = 0;
  for (auto x : xs) h = mix(h, x);
  return h;
}

json default_continual_module() {
  return {{"peft_type", "LORA"}, {"r", 8}, {"lora_alpha", 16}, {"target_modules", "all-linear"}};
}

std::string module_name_for(const std::string& task) {
  std::string s = task;
  for (char& c : s)
    if (c == '.') c = '_';
  return s;
}

struct Phase {
  std::string stage;  // main | continual | baseline
  int64_t index = 0;  // within the stage
  std::vector<size_t> tasks;
  std::set<std::string> train_adapters;
  bool backbone = false;
  int64_t global_offset = 0;  // checkpoint numbering: global step = offset + step
  std::string label() const { return stage == "main" ? "train" : stage + "/" + std::to_string(index); }
};

struct PhaseOutcome {
  int64_t steps = 0;
  double last_loss = 0;
  bool stopped_early = false;
};

double mean_of(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  return v.empty() ? 0.0 : s / static_cast<double>(v.size());
}

// Forgetting of task j (Chaudhry et al. 2018): its best accuracy before the last task
// minus its final accuracy; averaged over j < T−1.
void summarize(ContinualResult& cr) {
  const size_t T = cr.accuracy.size();
  if (T == 0) return;
  std::vector<double> forgetting;
  for (size_t j = 0; j + 1 < T; ++j) {
    double best = -INFINITY;
    for (size_t t = j; t + 1 < T; ++t) best = std::max(best, cr.accuracy[t][j]);
    forgetting.push_back(best - cr.accuracy[T - 1][j]);
  }
  cr.average_forgetting = mean_of(forgetting);
  cr.average_accuracy = mean_of(cr.accuracy.back());
}

}  // namespace

struct Trainer::State {
  TrainConfig cfg;
  std::unique_ptr<text::Tokenizer> tokenizer;
  io::ModelConfig model_config;
  torch::Device device{torch::kCPU};
  bool autocast = false;
  std::vector<TaskRuntime> prototypes;  // encoded data, no heads

  // The stage being run.
  std::shared_ptr<Backbone> model;
  std::vector<Adapter> adapters;
  std::vector<bool> adapter_trainable;
  std::vector<TaskRuntime> tasks;
  std::map<size_t, std::vector<std::string>> enabled;  // task -> adapters on for its batches
  bool backbone_trainable = false;
  // cfg.compose applied over the adapters (main stage): its members are never switched by
  // activate() (the composites run them); members of fuse(...) stay frozen.
  std::optional<Composition> composition;
  std::set<std::string> composed, fused;
  bool routes_by_task = false;

  Callbacks cb;
  std::ofstream metrics;
  std::optional<LoadedCheckpoint> resume_from;
  json results = json::object();  // finished stages' results (kept in checkpoints)

  void note(const std::string& s) const {
    if (cb.on_message) cb.on_message(s);
  }
  std::string out(const std::string& name) const { return fs::join(cfg.output, name); }

  // ---- construction ------------------------------------------------------------------
  void load_data(const Datasets& data) {
    for (const auto& kv : data)
      if (std::none_of(cfg.tasks.begin(), cfg.tasks.end(), [&](const TaskConfig& t) { return t.name == kv.first; }))
        throw ConfigError("[train] in-memory data for task '" + kv.first + "', which is not in the config's tasks");
    std::string tok_path = cfg.tokenizer;
    if (tok_path.empty()) tok_path = fs::is_dir(cfg.model) ? cfg.model : fs::parent(cfg.model);
    try {
      tokenizer = text::Tokenizer::from_file(tok_path);
    } catch (const std::exception& e) {
      throw ConfigError("[train] " + cfg.source + ": cannot load the tokenizer from '" + tok_path +
                        "' (set 'tokenizer' to a tokenizer.json): " + e.what());
    }
    for (size_t i = 0; i < cfg.tasks.size(); ++i) {
      const TaskConfig& t = cfg.tasks[i];
      auto it = data.find(t.name);
      std::vector<json> train, eval;
      std::string train_src = t.train, eval_src = t.eval;
      if (it != data.end() && !it->second.train.empty()) train = it->second.train, train_src = "task '" + t.name + "' train";
      else if (!t.train.empty()) train = load_records(t.train);
      else throw ConfigError("[train] " + cfg.source + ": task '" + t.name + "' has no 'train' data");
      if (it != data.end() && !it->second.eval.empty()) eval = it->second.eval, eval_src = "task '" + t.name + "' eval";
      else if (!t.eval.empty()) eval = load_records(t.eval);
      if (train.empty()) fail("task '" + t.name + "': the training data is empty");
      TaskRuntime rt{t, Encoding::build(t, train, *tokenizer, model_config)};
      rt.train = rt.enc.encode(train, train_src);
      rt.eval = rt.enc.encode(eval, eval_src);
      for (const auto* set : {&rt.train, &rt.eval})
        for (const auto& ex : *set)
          for (int64_t id : ex.input_ids)
            if (id < 0 || id >= model_config.vocab_size)
              fail("task '" + t.name + "': token id " + std::to_string(id) + " is outside the model's vocabulary (" +
                   std::to_string(model_config.vocab_size) + "): the tokenizer does not belong to the model");
      rt.data_seed = mix({cfg.seed, 0xda7aULL, i});
      if (cfg.continual.enabled && rt.eval.empty())
        throw ConfigError("[train] " + cfg.source + ": continual learning needs 'eval' data for task '" + t.name + "'");
      prototypes.push_back(std::move(rt));
    }
  }

  // ---- stage building ----------------------------------------------------------------
  void build(bool train_backbone, const std::vector<ModuleSpec>& specs, bool compose = false) {
    composition.reset(), composed.clear(), fused.clear(), routes_by_task = false;
    adapters.clear(), adapter_trainable.clear(), enabled.clear();
    if (cfg.init == "random") {
      model = create_backbone(model_config);
      init_weights(*model, cfg.init_std, cfg.seed);
      model->to(device);
    } else {
      LoadOptions o;
      o.device = device;
      o.dtype = torch::kFloat32;  // fp32 master weights; bf16 compute via autocast
      model = load_backbone(cfg.model, o);
    }
    backbone_trainable = train_backbone;
    if (train_backbone) {
      for (auto& p : model->parameters()) p.set_requires_grad(true);
    } else {
      freeze_backbone(*model);
    }
    torch::manual_seed(cfg.seed);  // fresh modules are initialised from torch's RNG
    for (const auto& s : specs) {
      if (!s.path.empty()) {
        std::string type = peft_type_of(s.path);
        auto supported = supported_peft_types();
        if (std::find(supported.begin(), supported.end(), type) != supported.end()) {
          adapters.push_back(load_adapter(*model, s.path, s.name));
        } else {
          // Sparse diffs, BitFit, hypernetworks: applied to the weights, not trained here.
          LoadedModules into;
          load_module_folder(*model, s.path, 1.0, 0, into);
          note("module '" + s.name + "' (" + type + ") applied to the weights (not trainable in this run)");
          continue;
        }
      } else {
        adapters.push_back(add_adapter(*model, s.config, s.name));
      }
      adapter_trainable.push_back(s.trainable);
    }
    if (compose && !cfg.compose.empty()) apply_compose();
    tasks = prototypes;
    const int64_t H = model_config.hidden_size;
    for (size_t i = 0; i < tasks.size(); ++i) {
      if (!tasks[i].classification()) continue;
      tasks[i].head = torch::nn::Linear(H, tasks[i].num_labels());
      torch::NoGradGuard g;
      auto gen = at::detail::createCPUGenerator(mix({cfg.seed, 0x4eadULL, i}));
      tasks[i].head->weight.copy_(at::normal(0.0, 0.02, tasks[i].head->weight.sizes(), gen));
      tasks[i].head->bias.zero_();
      tasks[i].head->to(device);
    }
    model->train();
  }

  // Applies cfg.compose over the run's adapters (names = the config's module names).
  void apply_compose() {
    auto bad = [&](const std::string& msg) { throw ConfigError("[train] " + cfg.source + ": 'compose': " + msg); };
    SpecNode spec;
    try {
      spec = parse_spec(cfg.compose);
    } catch (const SpecError& e) {
      bad(e.what());
    }
    std::map<std::string, const Adapter*> by_name;
    for (auto& a : adapters) by_name[a.name] = &a;
    for (const auto& name : module_names(spec))
      if (!by_name.count(name))
        bad("module '" + name + "' was applied to the backbone weights (not an adapter) and cannot be composed");
    try {
      composition = apply_spec(*model, spec, by_name);
    } catch (const std::invalid_argument& e) {  // SpecError too
      bad(e.what());
    }
    for (const auto& name : module_names(spec)) composed.insert(name);
    std::vector<const SpecNode*> stack = {&spec};
    while (!stack.empty()) {
      const SpecNode* n = stack.back();
      stack.pop_back();
      if (n->kind == SpecNode::Kind::Fuse)
        for (const auto& c : n->children)
          for (const auto& name : module_names(c)) fused.insert(name);
      if (n->kind == SpecNode::Kind::Route) routes_by_task = true;
      for (const auto& c : n->children) stack.push_back(&c);
    }
    int64_t params = 0;
    for (auto& p : composition->parameters()) params += p.numel();
    note("compose: " + cfg.compose + " (" + std::to_string(composition->fusions.size()) + " fusion(s), " +
         std::to_string(params) + " fusion parameters)");
  }

  static std::string peft_type_of(const std::string& dir) {
    std::ifstream in(fs::join(dir, "adapter_config.json"));
    if (!in) fail("module folder " + dir + " has no adapter_config.json");
    json c;
    try {
      c = json::parse(in);
    } catch (const json::exception& e) {
      fail(dir + "/adapter_config.json: invalid JSON: " + e.what());
    }
    return c.value("peft_type", std::string());
  }

  Adapter* adapter(const std::string& name) {
    for (auto& a : adapters)
      if (a.name == name) return &a;
    return nullptr;
  }

  // Turns on the adapters of `task` (all when it names none) and returns the input modules
  // to apply: the enabled adapters', then the composition's. Members of the composition are
  // left as the composition set them (switching them on would run them twice).
  detail::InputModules activate(size_t task) {
    auto it = enabled.find(task);
    detail::InputModules on;
    for (auto& a : adapters) {
      if (composed.count(a.name)) continue;
      bool use = it == enabled.end() || it->second.empty() ||
                 std::find(it->second.begin(), it->second.end(), a.name) != it->second.end();
      a.set_enabled(use);
      if (use && a.input) on.push_back(a.input);
    }
    if (composition)
      for (const auto& m : composition->inputs) on.push_back(m);
    return on;
  }

  // route(task, ...): every row of a batch of task `ti` carries the task's index.
  void route_rows(size_t ti, int64_t rows) {
    if (routes_by_task)
      composition->context->set("task", torch::full({rows}, static_cast<int64_t>(ti), torch::TensorOptions(torch::kInt64).device(device)));
  }

  // ---- parameters, optimizer ---------------------------------------------------------
  // Everything a checkpoint restores: all module parameters, heads, the backbone if trained.
  std::vector<std::pair<std::string, torch::Tensor>> named_state() {
    std::vector<std::pair<std::string, torch::Tensor>> out;
    for (auto& a : adapters) {
      for (auto& m : a.modules)
        for (auto& p : m.module->named_parameters()) out.emplace_back("adapter/" + a.name + "/" + m.site + "/" + p.key(), p.value());
      if (a.input)
        for (auto& p : a.input->named_parameters()) out.emplace_back("adapter/" + a.name + "/input/" + p.key(), p.value());
    }
    if (composition)
      for (auto& f : composition->fusions)
        for (auto& [site, fusion] : f.sites)
          for (auto& [key, p] : fusion->fusion_parameters()) out.emplace_back("compose/" + f.name + "/" + site + "/" + key, p);
    for (auto& t : tasks)
      if (t.head)
        for (auto& p : t.head->named_parameters()) out.emplace_back("head/" + t.cfg.name + "/" + p.key(), p.value());
    if (backbone_trainable)
      for (auto& p : state_dict_params()) out.push_back(p);
    return out;
  }

  std::vector<std::pair<std::string, torch::Tensor>> state_dict_params() {
    std::vector<std::pair<std::string, torch::Tensor>> out;
    for (auto& p : model->named_parameters())
      if (p.key().find(".adapters.") == std::string::npos) out.emplace_back("backbone/" + p.key(), p.value());
    return out;
  }

  // AdamW groups (modules / routers / heads / backbone), each with its own peak lr.
  std::unique_ptr<torch::optim::AdamW> optimizer(const Phase& ph, std::vector<double>& peak_lrs, std::vector<torch::Tensor>& all,
                                                 int64_t& count) {
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
    std::vector<torch::optim::OptimizerParamGroup> groups;
    peak_lrs.clear(), all.clear();
    count = 0;
    auto add = [&](std::vector<torch::Tensor>& params, std::optional<double> lr) {
      double peak = lr.value_or(o.lr);
      if (params.empty() || peak == 0) {
        for (auto& p : params) p.set_requires_grad(false);
        return;
      }
      auto opts = std::make_unique<torch::optim::AdamWOptions>(peak);
      opts->betas({o.beta1, o.beta2}).eps(o.eps).weight_decay(o.weight_decay);
      for (auto& p : params) count += p.numel(), all.push_back(p);
      groups.emplace_back(params, std::move(opts));
      peak_lrs.push_back(peak);
    };
    add(modules, o.lr_modules);
    add(routers, o.lr_routers);
    add(heads, o.lr_heads);
    add(backbone, o.lr_backbone);
    if (groups.empty()) fail("phase " + ph.label() + " has nothing to train (no trainable modules, heads or backbone)");
    return std::make_unique<torch::optim::AdamW>(std::move(groups), torch::optim::AdamWOptions(o.lr));
  }

  // ---- evaluation --------------------------------------------------------------------
  std::map<std::string, double> evaluate(size_t ti) {
    TaskRuntime& t = tasks[ti];
    torch::NoGradGuard g;
    model->eval();
    auto inputs = activate(ti);
    detail::EvalSums sums;
    int64_t n = static_cast<int64_t>(t.eval.size());
    if (cfg.eval.max_examples > 0) n = std::min(n, cfg.eval.max_examples);
    for (int64_t s = 0, k = 0; s < n; s += cfg.eval.batch_size, ++k) {
      std::vector<const Example*> rows;
      for (int64_t i = s; i < std::min(n, s + cfg.eval.batch_size); ++i) rows.push_back(&t.eval[i]);
      Batch b = collate(rows, t.enc.pad_id(), t.cfg.type == TaskType::SequenceClassification);
      if (t.cfg.type == TaskType::MaskedLM)
        mask_tokens(b, t.cfg.mlm_probability, t.enc.mask_id(), model_config.vocab_size, t.enc.special_ids(),
                    mix({cfg.seed, 0xe7a1ULL, ti, static_cast<uint64_t>(k)}));
      route_rows(ti, b.input_ids.size(0));
      detail::batch_loss(*model, t, inputs, b.to(device), &sums);
    }
    model->train();
    return detail::finish_eval(t, sums);
  }

  void log_line(json j) {
    if (metrics.is_open()) metrics << j.dump() << "\n" << std::flush;
  }

  // ---- checkpoints -------------------------------------------------------------------
  void save(const Phase& ph, int64_t step, torch::optim::Optimizer& opt, const json& loop) {
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
    d.state = {{"stage", ph.stage}, {"phase", ph.index}, {"step", step}, {"data", pos}, {"loop", loop}, {"results", results}};
    save_checkpoint(out("checkpoints"), ph.global_offset + step, d, cfg.checkpoint.keep);
  }

  void restore_tensors(const LoadedCheckpoint& ck) {
    std::map<std::string, torch::Tensor> saved(ck.data.tensors.begin(), ck.data.tensors.end());
    torch::NoGradGuard g;
    for (auto& [name, t] : named_state()) {
      auto it = saved.find(name);
      if (it == saved.end()) fail("checkpoint " + ck.dir + " does not match the config: it has no tensor '" + name + "'");
      if (it->second.sizes() != t.sizes()) fail("checkpoint " + ck.dir + ": tensor '" + name + "' has another shape than the run's");
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

  // ---- one phase ---------------------------------------------------------------------
  PhaseOutcome run_phase(const Phase& ph) {
    const auto& o = cfg.optim;
    std::vector<double> peaks;
    std::vector<torch::Tensor> params;
    int64_t trainable = 0;
    auto opt = optimizer(ph, peaks, params, trainable);
    note(ph.label() + ": " + std::to_string(trainable) + " trainable parameters");

    std::vector<int64_t> sizes;
    for (size_t t : ph.tasks) sizes.push_back(static_cast<int64_t>(tasks[t].train.size()));
    auto probs = sampling_probabilities(sizes, cfg.multitask.sampling, cfg.multitask.temperature);

    int64_t step = 0, bad_evals = 0;
    double best = INFINITY, last_loss = 0;
    if (resume_from && resume_from->data.state.value("stage", "") == ph.stage &&
        resume_from->data.state.value("phase", int64_t{-1}) == ph.index) {
      restore_tensors(*resume_from);
      torch::serialize::InputArchive ar;
      std::istringstream is(resume_from->data.optimizer);
      ar.load_from(is);
      opt->load(ar);
      step = resume_from->data.state.at("step");
      const json& loop = resume_from->data.state.at("loop");
      best = loop.contains("best") && loop["best"].is_number() ? loop["best"].get<double>() : INFINITY;
      bad_evals = loop.value("bad_evals", int64_t{0});
      last_loss = loop.value("last_loss", 0.0);
      note("resumed " + ph.label() + " at step " + std::to_string(step) + " from " + resume_from->dir);
      resume_from.reset();
    }

    auto start = std::chrono::steady_clock::now();
    int64_t tokens = 0, first_step = step;
    bool stopped = false;
    while (step < o.max_steps && !stopped) {
      // Gradients to none (not zero): a parameter without a gradient this step (the head of a
      // task not sampled) is left alone by AdamW, on every torch version and after a resume.
      for (auto& p : params) p.mutable_grad() = torch::Tensor();
      double loss_sum = 0;
      std::string task_name;
      for (int64_t micro = 0; micro < o.grad_accum; ++micro) {
        std::mt19937_64 rng(mix({cfg.seed, 0x5a3eULL, static_cast<uint64_t>(ph.global_offset + step), static_cast<uint64_t>(micro)}));
        std::discrete_distribution<size_t> pick(probs.begin(), probs.end());
        size_t ti = ph.tasks[pick(rng)];
        TaskRuntime& t = tasks[ti];
        task_name = t.cfg.name;
        Batch b = t.next_batch(o.batch_size);
        if (t.cfg.type == TaskType::MaskedLM)
          mask_tokens(b, t.cfg.mlm_probability, t.enc.mask_id(), model_config.vocab_size, t.enc.special_ids(),
                      mix({cfg.seed, 0x3a5cULL, static_cast<uint64_t>(ph.global_offset + step), static_cast<uint64_t>(micro)}));
        tokens += b.tokens;
        auto inputs = activate(ti);
        route_rows(ti, b.input_ids.size(0));
        if (autocast) compat::set_cuda_autocast(true);
        auto loss = detail::batch_loss(*model, t, inputs, b.to(device));
        if (autocast) compat::set_cuda_autocast(false);
        double v = loss.item<double>();
        if (!std::isfinite(v))
          fail("loss is " + std::string(std::isnan(v) ? "NaN" : "infinite") + " at step " + std::to_string(step + 1) + " of " +
               ph.label() + " (task '" + t.cfg.name + "', lr " + std::to_string(peaks[0]) +
               "): lower the learning rate, set optim.max_grad_norm, or check the data");
        (loss * (t.cfg.weight / static_cast<double>(o.grad_accum))).backward();
        loss_sum += v;
      }
      double norm = torch::nn::utils::clip_grad_norm_(params, o.max_grad_norm > 0 ? o.max_grad_norm : 1e30);
      if (!std::isfinite(norm)) fail("gradient norm is not finite at step " + std::to_string(step + 1) + " of " + ph.label());
      double factor = lr_factor(o.schedule, step, o.warmup_steps, o.max_steps, o.min_lr_ratio);
      for (size_t g = 0; g < opt->param_groups().size(); ++g)
        static_cast<torch::optim::AdamWOptions&>(opt->param_groups()[g].options()).lr(peaks[g] * factor);
      opt->step();
      ++step;
      last_loss = loss_sum / static_cast<double>(o.grad_accum);

      double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      StepInfo info;
      info.step = step, info.total_steps = o.max_steps, info.phase = ph.label(), info.task = task_name;
      info.loss = last_loss, info.lr = peaks[0] * factor, info.grad_norm = norm, info.elapsed_s = elapsed;
      info.tokens_per_s = elapsed > 0 ? static_cast<double>(tokens) / elapsed : 0;
      info.eta_s = step > first_step ? elapsed / static_cast<double>(step - first_step) * static_cast<double>(o.max_steps - step) : 0;
      if (step % cfg.log_every == 0 || step == o.max_steps) {
        if (cb.on_step) cb.on_step(info);
        log_line({{"type", "step"}, {"phase", info.phase}, {"step", step}, {"global_step", ph.global_offset + step},
                  {"task", task_name}, {"loss", last_loss}, {"lr", info.lr}, {"grad_norm", norm},
                  {"tokens_per_s", info.tokens_per_s}, {"elapsed_s", elapsed}});
      }
      if (cfg.eval.every > 0 && step % cfg.eval.every == 0 && step < o.max_steps) {
        double score = eval_tasks(ph, step);
        if (cfg.eval.patience > 0 && !std::isnan(score)) {
          if (score < best) best = score, bad_evals = 0;
          else if (++bad_evals >= cfg.eval.patience) {
            stopped = true;
            note(ph.label() + ": early stopping at step " + std::to_string(step) + " (no better eval loss for " +
                 std::to_string(bad_evals) + " evaluations)");
          }
        }
      }
      if (cfg.checkpoint.every > 0 && step % cfg.checkpoint.every == 0 && step < o.max_steps && !stopped)
        save(ph, step, *opt, {{"best", std::isfinite(best) ? json(best) : json(nullptr)}, {"bad_evals", bad_evals}, {"last_loss", last_loss}});
    }
    return {step, last_loss, stopped};
  }

  // Evaluates the phase's tasks; returns the mean eval loss (NaN when none has eval data).
  double eval_tasks(const Phase& ph, int64_t step) {
    std::vector<double> losses;
    for (size_t ti : ph.tasks) {
      if (tasks[ti].eval.empty()) continue;
      auto m = evaluate(ti);
      losses.push_back(m["loss"]);
      EvalInfo e{step, ph.label(), tasks[ti].cfg.name, m};
      if (cb.on_eval) cb.on_eval(e);
      json line = {{"type", "eval"}, {"phase", e.phase}, {"step", step}, {"global_step", ph.global_offset + step}, {"task", e.task}};
      for (auto& [k, v] : m) line[k] = std::isfinite(v) ? json(v) : json(nullptr);
      log_line(line);
    }
    return losses.empty() ? NAN : mean_of(losses);
  }

  // ---- outputs -----------------------------------------------------------------------
  void save_heads() {
    io::NamedTensors heads;
    json meta = json::object();
    for (auto& t : tasks) {
      meta[t.cfg.name] = {{"type", to_string(t.cfg.type)}, {"labels", t.enc.labels()}};
      if (t.head)
        for (auto& p : t.head->named_parameters()) heads.emplace_back(t.cfg.name + "." + p.key(), p.value().detach().cpu());
    }
    if (!heads.empty()) io::save_safetensors(out("heads.safetensors"), heads, {{"format", "pt"}});
    std::ofstream(out("heads.json")) << meta.dump(2) << "\n";
  }

  void save_modules(const std::function<bool(size_t)>& which) {
    for (size_t i = 0; i < adapters.size(); ++i)
      if (which(i)) save_adapter(adapters[i], out("modules/" + adapters[i].name));
  }

  // ---- stages ------------------------------------------------------------------------
  void main_stage(TrainResult& r) {
    build(cfg.train_backbone, cfg.modules, /*compose=*/true);
    for (size_t i = 0; i < tasks.size(); ++i) enabled[i] = tasks[i].cfg.modules;
    Phase ph{"main", 0, {}, {}, cfg.train_backbone, 0};
    for (size_t i = 0; i < tasks.size(); ++i) ph.tasks.push_back(i);
    for (size_t i = 0; i < adapters.size(); ++i)
      if (adapter_trainable[i] && !fused.count(adapters[i].name)) ph.train_adapters.insert(adapters[i].name);
    r.total_parameters = 0;
    for (auto& p : model->parameters()) r.total_parameters += p.numel();
    for (auto& t : tasks)
      if (t.head) r.total_parameters += t.head->weight.numel() + t.head->bias.numel();
    auto outcome = run_phase(ph);
    for (auto& p : model->parameters())
      if (p.requires_grad()) r.trainable_parameters += p.numel();
    for (auto& t : tasks)
      if (t.head && t.head->weight.requires_grad()) r.trainable_parameters += t.head->weight.numel() + t.head->bias.numel();
    for (auto& a : adapters)
      if (a.input)
        for (auto& p : a.input->parameters())
          if (p.requires_grad()) r.trainable_parameters += p.numel();
    r.steps = outcome.steps, r.final_loss = outcome.last_loss, r.stopped_early = outcome.stopped_early;
    for (size_t i = 0; i < tasks.size(); ++i)
      if (!tasks[i].eval.empty()) {
        r.eval[tasks[i].cfg.name] = evaluate(i);
        EvalInfo e{outcome.steps, "final", tasks[i].cfg.name, r.eval[tasks[i].cfg.name]};
        if (cb.on_eval) cb.on_eval(e);
      }
    save_modules([&](size_t i) { return adapter_trainable[i]; });
    save_heads();
    if (composition) {
      for (const auto& f : composition->fusions) save_fusion(f, out("compose/" + f.name));
      fs::make_dirs(out("compose"));
      std::ofstream(out("compose/spec.txt")) << cfg.compose << "\n";
    }
    if (cfg.train_backbone || cfg.save_model) {
      if (composition) remove_composition(*composition);
      for (auto& a : adapters) remove_adapter(a);
      save_backbone(*model, out("model"));
      note("model written to " + out("model"));
    }
  }

  // Tasks in sequence (survey §6.3): one new module (or, for the baseline, the whole
  // backbone) per task; after each task every task is evaluated.
  ContinualResult sequence_stage(const std::string& stage, int64_t stage_offset) {
    std::vector<ModuleSpec> specs;
    bool baseline = stage == "baseline";
    if (!baseline)
      for (auto& t : cfg.tasks)
        specs.push_back({module_name_for(t.name), cfg.continual.module.is_null() ? default_continual_module() : cfg.continual.module, "", true});
    build(baseline, specs);
    ContinualResult cr;
    for (auto& t : tasks) cr.tasks.push_back(t.cfg.name);
    const json& saved = results.contains(stage + "_rows") ? results[stage + "_rows"] : json::array();
    for (size_t i = 0; i < tasks.size(); ++i) {
      if (!baseline) enabled[i] = {specs[i].name};
      if (i < saved.size() && !(resume_from && resume_from->data.state.value("phase", int64_t{-1}) == static_cast<int64_t>(i) &&
                                 resume_from->data.state.value("stage", "") == stage)) {
        cr.accuracy.push_back(saved[i].get<std::vector<double>>());  // finished before the resume
        continue;
      }
      Phase ph{stage, static_cast<int64_t>(i), {i}, {}, baseline, stage_offset + static_cast<int64_t>(i) * cfg.optim.max_steps};
      if (!baseline) ph.train_adapters = {specs[i].name};
      if (resume_from && resume_from->data.state.value("stage", "") == stage &&
          resume_from->data.state.value("phase", int64_t{0}) > static_cast<int64_t>(i))
        continue;
      run_phase(ph);
      std::vector<double> row;
      for (size_t j = 0; j < tasks.size(); ++j) {
        auto m = evaluate(j);
        row.push_back(m["accuracy"]);
        EvalInfo e{cfg.optim.max_steps, ph.label(), tasks[j].cfg.name, m};
        if (cb.on_eval) cb.on_eval(e);
      }
      log_line({{"type", "continual"}, {"stage", stage}, {"after_task", tasks[i].cfg.name}, {"accuracy", row}});
      cr.accuracy.push_back(row);
      results[stage + "_rows"] = cr.accuracy;
    }
    summarize(cr);
    if (!baseline) {
      save_modules([](size_t) { return true; });
      save_heads();
    }
    return cr;
  }
};

Trainer::Trainer(TrainConfig config, Datasets data) : state_(std::make_unique<State>()) {
  auto& s = *state_;
  s.cfg = std::move(config);
  try {
    s.device = torch::Device(s.cfg.device);
  } catch (const std::exception&) {
    throw ConfigError("[train] " + s.cfg.source + ": 'device' must be cpu, cuda or cuda:N, got '" + s.cfg.device + "'");
  }
  if (s.device.is_cuda() && !torch::cuda::is_available()) fail("device '" + s.cfg.device + "' requested but CUDA is not available");
  s.autocast = s.device.is_cuda() && s.cfg.optim.bf16 != "false";
  if (s.cfg.optim.bf16 == "true" && !s.device.is_cuda()) fail("optim.bf16 = true needs a CUDA device (bf16 autocast)");
  try {
    s.model_config = io::load_hf_config(s.cfg.model);
  } catch (const std::exception& e) {
    throw ConfigError("[train] " + s.cfg.source + ": 'model': " + e.what());
  }
  s.load_data(data);
}

Trainer::~Trainer() = default;

const TrainConfig& Trainer::config() const { return state_->cfg; }

TrainResult Trainer::run(const Callbacks& callbacks, bool resume) {
  auto& s = *state_;
  s.cb = callbacks;
  fs::make_dirs(s.cfg.output);
  TrainResult r;
  r.output = s.cfg.output;
  if (resume) {
    s.resume_from = load_latest_checkpoint(s.out("checkpoints"));
    if (s.resume_from) {
      for (const auto& why : s.resume_from->skipped) s.note("skipped incomplete checkpoint " + why);
      s.results = s.resume_from->data.state.value("results", json::object());
      r.resumed = true;
    } else {
      s.note("no complete checkpoint in " + s.out("checkpoints") + ": starting from scratch");
    }
  }
  if (!s.resume_from) fs::remove_tree(s.out("checkpoints"));
  // Metrics: keep the lines up to the checkpoint on resume (later ones are repeated).
  std::vector<std::string> kept;
  if (s.resume_from) {
    std::ifstream in(s.out("metrics.jsonl"));
    int64_t limit = s.resume_from->step;
    for (std::string line; std::getline(in, line);) {
      auto j = json::parse(line, nullptr, false);
      if (!j.is_discarded() && j.value("global_step", int64_t{0}) <= limit) kept.push_back(line);
    }
  }
  s.metrics.open(s.out("metrics.jsonl"), std::ios::trunc);
  for (auto& line : kept) s.metrics << line << "\n";

  std::string resume_stage = s.resume_from ? s.resume_from->data.state.value("stage", "main") : "";
  if (!s.cfg.continual.enabled) {
    s.main_stage(r);
  } else {
    const int64_t T = static_cast<int64_t>(s.cfg.tasks.size());
    if (resume_stage != "baseline") {
      r.continual = s.sequence_stage("continual", 0);
    } else {  // the module sequence finished before the checkpoint
      ContinualResult c;
      for (auto& t : s.cfg.tasks) c.tasks.push_back(t.name);
      c.accuracy = s.results.at("continual_rows").get<std::vector<std::vector<double>>>();
      summarize(c);
      r.continual = c;
    }
    if (s.cfg.continual.full_finetune_baseline) r.baseline = s.sequence_stage("baseline", T * s.cfg.optim.max_steps);
    r.steps = s.cfg.optim.max_steps * T;
  }
  json res = {{"steps", r.steps}, {"final_loss", r.final_loss}, {"stopped_early", r.stopped_early}, {"resumed", r.resumed},
              {"trainable_parameters", r.trainable_parameters}, {"total_parameters", r.total_parameters}, {"eval", r.eval}};
  auto cont = [](const ContinualResult& c) {
    return json{{"tasks", c.tasks}, {"accuracy", c.accuracy}, {"average_forgetting", c.average_forgetting},
                {"average_accuracy", c.average_accuracy}};
  };
  if (r.continual) res["continual"] = cont(*r.continual);
  if (r.baseline) res["baseline"] = cont(*r.baseline);
  std::string tmp = s.out("result.json.tmp");
  std::ofstream(tmp) << res.dump(2) << "\n";
  fs::rename(tmp, s.out("result.json"));
  s.metrics.close();
  return r;
}

TrainResult train(const TrainConfig& config, const Datasets& data, const Callbacks& callbacks, bool resume) {
  return Trainer(config, data).run(callbacks, resume);
}

}  // namespace modula::train
