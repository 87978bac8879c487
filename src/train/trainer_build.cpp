// The Trainer's construction side: task data, and per stage the backbone, its modules,
// the composition, the heads; which modules a task's batches use.
#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>

#include "modula/backbone/registry.h"
#include "modula/composition/composition_module.h"
#include "modula/routing/router.h"
#include "run_modules.h"
#include "trainer_state.h"

namespace modula::train {

using detail::kTag;
using detail::mix;
using json = nlohmann::json;

void Trainer::State::load_data(const Datasets& data) {
  for (const auto& kv : data)
    if (std::none_of(cfg.tasks.begin(), cfg.tasks.end(), [&](const TaskConfig& t) { return t.name == kv.first; }))
      throw_error<ConfigError>("train",
                               "in-memory data for task '" + kv.first + "', which is not in the config's tasks");
  std::string tok_path = cfg.tokenizer;
  if (tok_path.empty()) tok_path = fs::is_dir(cfg.model) ? cfg.model : fs::parent(cfg.model);
  try {
    tokenizer = text::Tokenizer::from_file(tok_path);
  } catch (const std::exception& e) {
    throw_error<ConfigError>("train", cfg.source + ": cannot load the tokenizer from '" + tok_path +
                                          "' (set 'tokenizer' to a tokenizer.json): " + e.what());
  }
  const size_t n = cfg.tasks.size();
  std::vector<std::vector<json>> trains(n), evals(n);
  std::vector<NamedRecords> train_sets;
  std::vector<std::string> eval_srcs(n);
  for (size_t i = 0; i < n; ++i) {
    const TaskConfig& t = cfg.tasks[i];
    auto it = data.find(t.name);
    std::string train_src = t.train;
    eval_srcs[i] = t.eval;
    if (it != data.end() && !it->second.train.empty())
      trains[i] = it->second.train, train_src = "task '" + t.name + "' train";
    else if (!t.train.empty())
      trains[i] = load_records(t.train);
    else
      throw_error<ConfigError>("train", cfg.source + ": task '" + t.name + "' has no 'train' data");
    if (it != data.end() && !it->second.eval.empty())
      evals[i] = it->second.eval, eval_srcs[i] = "task '" + t.name + "' eval";
    else if (!t.eval.empty())
      evals[i] = load_records(t.eval);
    if (trains[i].empty()) throw_error<TrainError>(kTag, "task '" + t.name + "': the training data is empty");
    train_sets.emplace_back(train_src, &trains[i]);
  }
  // Metadata values left to the data, then the routing checks that need them.
  cfg.metadata = resolve_metadata(cfg.metadata, train_sets);
  check_routing(cfg, /*folders=*/true);
  for (size_t i = 0; i < n; ++i) {
    const TaskConfig& t = cfg.tasks[i];
    TaskRuntime rt{t, Encoding::build(t, trains[i], *tokenizer, model_config, cfg.metadata)};
    rt.train = rt.enc.encode(trains[i], train_sets[i].first);
    rt.eval = rt.enc.encode(evals[i], eval_srcs[i]);
    for (const auto* set : {&rt.train, &rt.eval}) detail::check_vocabulary(t.name, *set, model_config.vocab_size);
    rt.data_seed = mix({cfg.seed, 0xda7aULL, i});
    if (cfg.continual.enabled && rt.eval.empty())
      throw_error<ConfigError>("train",
                               cfg.source + ": continual learning needs 'eval' data for task '" + t.name + "'");
    prototypes.push_back(std::move(rt));
  }
}

// ---- stage building ----------------------------------------------------------------
void Trainer::State::build(bool train_backbone, const std::vector<ModuleSpec>& specs, bool compose) {
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
  model->set_activation_checkpointing(cfg.optim.activation_checkpointing);
  backbone_trainable = train_backbone;
  if (train_backbone) {
    for (auto& p : model->parameters()) p.set_requires_grad(true);
  } else {
    freeze_backbone(*model);
  }
  torch::manual_seed(cfg.seed);                  // fresh modules are initialised from torch's RNG
  routing = std::make_shared<RoutingContext>();  // task index per row for every module that routes by it
  for (const auto& s : specs) {
    ModuleEnv env;  // every module type through the registry (composition/registry.h)
    env.name = s.name;
    env.context = routing;
    env.task = -1;
    for (auto& a : adapters) env.members[a.name] = &a;
    adapters.push_back(s.path.empty() ? build_module(*model, s.config, env) : load_module(*model, s.path, env));
    adapter_trainable.push_back(s.trainable);
    detail::note_members(adapters.back(), composed, fused);
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
void Trainer::State::apply_compose() {
  SpecNode spec;
  try {
    spec = parse_spec(cfg.compose);
  } catch (const SpecError& e) {
    throw_error<ConfigError>(kTag, cfg.source + ": 'compose': " + e.what());
  }
  std::map<std::string, const Adapter*> by_name;
  for (auto& a : adapters) by_name[a.name] = &a;
  for (const auto& name : module_names(spec))
    if (!by_name.count(name))
      throw_error<ConfigError>(kTag,
                               cfg.source + ": 'compose': module '" + name +
                                   "' was applied to the backbone weights (not an adapter) and cannot be composed");
  try {
    composition = apply_spec(*model, spec, by_name);
  } catch (const std::invalid_argument& e) {  // SpecError too
    throw_error<ConfigError>(kTag, cfg.source + ": 'compose': " + e.what());
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

Adapter* Trainer::State::adapter(const std::string& name) {
  for (auto& a : adapters)
    if (a.name == name) return &a;
  return nullptr;
}

// Turns on the adapters of `task` and returns the input modules to apply (run_modules.h).
detail::InputModules Trainer::State::activate(size_t task) {
  auto it = enabled.find(task);
  return detail::activate_modules(adapters, composed, it == enabled.end() ? nullptr : &it->second,
                                  composition ? &*composition : nullptr);
}

// Every row of a batch of task `ti` carries the task's index and its metadata ids.
void Trainer::State::route_rows(size_t ti, const Batch& b) {
  detail::route_batch(*routing, routes_by_task ? composition->context.get() : nullptr, cfg.metadata, ti, b, device);
}

}  // namespace modula::train
