// Evaluator construction: a run's model, modules, composition, tasks and heads, or a model
// with module folders and tasks given by the caller.
#include <algorithm>

#include "evaluator_state.h"
#include "modula/backbone/registry.h"
#include "modula/composition/composition_module.h"
#include "modula/composition/registry.h"
#include "modula/train/run_output.h"
#include "modula/util/fs.h"
#include "modula/util/strings.h"

namespace modula::train {
namespace {

constexpr std::string_view kEvaluateLoadTag = "eval";

bool classification(TaskType t) { return t == TaskType::SequenceClassification || t == TaskType::TokenClassification; }

// The head of `t` in `heads` (load_heads): by task name, or (`by_type`) the only head of
// the task's type.
const RunHead& pick_head(const std::map<std::string, RunHead>& heads, TaskConfig& t, const std::string& file,
                         bool by_type) {
  auto it = heads.find(t.name);
  if (it == heads.end() && by_type) {
    std::vector<std::string> same;
    for (const auto& [name, h] : heads)
      if (h.type == t.type) same.push_back(name);
    if (same.size() == 1) it = heads.find(same[0]);
  }
  if (it == heads.end() || !it->second.weight.defined()) {
    std::vector<std::string> names;
    for (const auto& [name, h] : heads)
      if (h.weight.defined()) names.push_back(name + " (" + to_string(h.type) + ")");
    throw_error<ConfigError>(kEvaluateLoadTag, file + " has no head for task '" + t.name + "' (" + to_string(t.type) +
                                                   "); heads: " + (names.empty() ? "none" : joined(names)));
  }
  if (it->second.type != t.type)
    throw_error<ConfigError>(kEvaluateLoadTag, file + ": the head of task '" + it->first + "' is for " +
                                                   to_string(it->second.type) + ", not " + to_string(t.type));
  return it->second;
}

}  // namespace

Evaluator::Evaluator(const EvalSetup& setup) : state_(std::make_unique<State>()) {
  if (!setup.run.empty())
    state_->load_run(setup);
  else
    state_->load_parts(setup);
  if (state_->tasks.empty())
    throw_error<ConfigError>(kEvaluateLoadTag,
                             state_->source + ": no task to evaluate (give a task type and its fields)");
}

Evaluator::~Evaluator() = default;

void Evaluator::State::load_model(const std::string& dir, const std::string& tokenizer_path,
                                  const std::string& device_name) {
  try {
    device = torch::Device(device_name);
  } catch (const std::exception&) {
    throw_error<ConfigError>(kEvaluateLoadTag, "device must be cpu, cuda or cuda:N, got '" + device_name + "'");
  }
  if (device.is_cuda() && !torch::cuda::is_available())
    throw_error<TrainError>(kEvaluateLoadTag, "device '" + device_name + "' requested but CUDA is not available");
  model_config = io::load_hf_config(dir);
  try {
    tokenizer = text::Tokenizer::from_file(tokenizer_path);
  } catch (const std::exception& e) {
    throw_error<ConfigError>(kEvaluateLoadTag, "cannot load the tokenizer from '" + tokenizer_path + "': " + e.what());
  }
  LoadOptions o;
  o.device = device;
  o.dtype = torch::kFloat32;  // as the trainer evaluates
  model = load_backbone(dir, o);
  model->eval();
}

void Evaluator::State::add_task(TaskConfig t, const std::string& heads_file, bool by_type) {
  torch::nn::Linear head{nullptr};
  if (classification(t.type)) {
    if (heads_file.empty())
      throw_error<ConfigError>(kEvaluateLoadTag,
                               "task '" + t.name + "' (" + to_string(t.type) +
                                   ") needs a trained head: give the run, or its heads.safetensors (--heads)");
    if (!fs::is_file(heads_file))
      throw_error<ConfigError>(kEvaluateLoadTag, "task '" + t.name + "' (" + to_string(t.type) +
                                                     ") needs its head, but " + heads_file + " does not exist");
    const auto heads = load_heads(heads_file);
    const RunHead& h = pick_head(heads, t, heads_file, by_type);
    if (t.labels.empty()) t.labels = h.labels;
    if (static_cast<int64_t>(t.labels.size()) != h.weight.size(0))
      throw_error<ConfigError>(kEvaluateLoadTag, heads_file + ": the head of task '" + t.name + "' has " +
                                                     std::to_string(h.weight.size(0)) + " labels, the task " +
                                                     std::to_string(t.labels.size()) + " (" + joined(t.labels) + ")");
    if (h.weight.size(1) != model_config.hidden_size)
      throw_error<ConfigError>(kEvaluateLoadTag, heads_file + ": the head of task '" + t.name + "' takes hidden size " +
                                                     std::to_string(h.weight.size(1)) + ", the model has " +
                                                     std::to_string(model_config.hidden_size));
    head = torch::nn::Linear(h.weight.size(1), h.weight.size(0));
    torch::NoGradGuard g;
    head->weight.copy_(h.weight);
    if (h.bias.defined()) head->bias.copy_(h.bias);
    head->to(device);
  }
  detail::TaskRuntime rt;
  rt.enc = Encoding::build(t, {}, *tokenizer, model_config, metadata);
  rt.cfg = std::move(t);
  rt.head = head;
  tasks.push_back(std::move(rt));
}

void Evaluator::State::load_run(const EvalSetup& setup) {
  const RunOutput run = modula::train::load_run(setup.run);
  const TrainConfig& c = run.config;
  source = setup.run;
  const std::string out = run.dir;
  // The backbone: the one the run wrote (full fine-tuning, pretraining), else its input.
  std::string model_dir = c.model;
  if (fs::is_file(fs::join(out, "model/config.json")))
    model_dir = fs::join(out, "model");
  else if (c.init == "random" || c.train_backbone)
    throw_error<ConfigError>(kEvaluateLoadTag, "run " + setup.run + ": the run trains the backbone but " +
                                                   fs::join(out, "model") + " does not exist (was the run finished?)");
  std::string tok = c.tokenizer;
  if (tok.empty()) tok = fs::is_dir(c.model) ? c.model : fs::parent(c.model);
  if (model_dir != c.model && c.tokenizer.empty() && fs::is_file(fs::join(model_dir, "tokenizer.json")))
    tok = model_dir;
  load_model(model_dir, tok, setup.device.empty() ? c.device : setup.device);
  metadata = c.metadata;
  seed = c.seed;
  batch_size = setup.batch_size > 0 ? setup.batch_size : c.eval.batch_size;

  // The modules as the run left them: trained ones from output/modules, the others from
  // their folders; a continual run's one module per task.
  std::vector<std::pair<std::string, std::string>> folders;  // name, dir
  auto saved = [&](const std::string& name) { return fs::join(out, "modules/" + name); };
  if (c.continual.enabled) {
    for (size_t i = 0; i < c.tasks.size(); ++i) {
      const std::string name = continual_module_name(c.tasks[i].name);
      folders.emplace_back(name, saved(name));
      enabled[i] = {name};
    }
  } else {
    for (const auto& m : c.modules) {
      if (fs::is_dir(saved(m.name)))
        folders.emplace_back(m.name, saved(m.name));
      else if (!m.path.empty())
        folders.emplace_back(m.name, m.path);
      else
        throw_error<ConfigError>(kEvaluateLoadTag, "run " + setup.run + ": module '" + m.name + "' was not saved (no " +
                                                       saved(m.name) + ")");
    }
    if (!c.compose.empty()) folders.emplace_back("compose", fs::join(out, "compose"));
    for (size_t i = 0; i < c.tasks.size(); ++i) {
      enabled[i] = c.tasks[i].modules;
      if (!c.compose.empty() && !enabled[i].empty()) enabled[i].push_back("compose");  // on for every task
    }
  }
  adapters.reserve(folders.size());
  for (const auto& [name, dir] : folders) {
    if (!fs::is_file(fs::join(dir, "adapter_config.json")))
      throw_error<ConfigError>(kEvaluateLoadTag,
                               "run " + setup.run + ": module '" + name + "': no adapter_config.json in " + dir);
    ModuleEnv env;
    env.name = name;
    env.context = routing;
    env.task = -1;  // per row, from the routing context
    for (auto& a : adapters) env.members[a.name] = &a;
    adapters.push_back(load_module(*model, dir, env));
    detail::note_members(adapters.back(), composed, fused);
  }
  for (const auto& t : c.tasks) add_task(t, fs::join(out, "heads.safetensors"), /*by_type=*/false);
}

void Evaluator::State::load_parts(const EvalSetup& setup) {
  if (setup.model.empty())
    throw_error<ConfigError>(kEvaluateLoadTag,
                             "nothing to evaluate: give a run (its output folder or config) or a model folder");
  source = setup.model;
  load_model(setup.model, setup.tokenizer.empty() ? setup.model : setup.tokenizer,
             setup.device.empty() ? "cpu" : setup.device);
  seed = setup.seed;
  batch_size = setup.batch_size > 0 ? setup.batch_size : 16;
  if (setup.compose.empty() && !setup.modules.empty())
    throw_error<ConfigError>(kEvaluateLoadTag, "named modules (--module) need a composition (--compose)");
  adapters.reserve(setup.adapters.size() + setup.modules.size() + 1);
  for (auto& a : load_module_folders(*model, setup.adapters, /*task=*/-1, routing)) adapters.push_back(std::move(a));
  if (!setup.compose.empty() && fs::is_file(fs::join(setup.compose, "adapter_config.json"))) {
    ModuleEnv env;  // a trained composition folder over its members
    env.context = routing;
    env.task = -1;
    for (const auto& [name, dir] : setup.modules) {
      env.name = name;
      adapters.push_back(load_module(*model, dir, env));
      env.members[name] = &adapters.back();
    }
    env.name = "compose";
    adapters.push_back(load_module(*model, setup.compose, env));
    detail::note_members(adapters.back(), composed, fused);
  } else if (!setup.compose.empty()) {
    composition = apply_spec(*model, parse_spec(setup.compose), setup.modules);
  }
  for (const auto& t : setup.tasks) add_task(t, setup.heads, /*by_type=*/true);
}

}  // namespace modula::train
