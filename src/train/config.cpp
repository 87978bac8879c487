// TrainConfig from JSON/YAML: typed fields, defaults, unknown keys rejected, one
// validation pass with messages naming the file and key path.
#include "modula/train/config.h"

#include <algorithm>
#include <fstream>
#include <set>
#include <sstream>

#include "config_routing.h"
#include "modula/composition/spec.h"
#include "modula/io/yaml.h"
#include "modula/util/error.h"
#include "modula/util/fs.h"
#include "modula/util/json.h"

namespace modula::train {
namespace {

using json = nlohmann::json;

// A JSON object being read at key path `where`; every key must be consumed.
class Fields {
 public:
  Fields(const json& j, std::string where, std::string source)
      : j_(j), where_(std::move(where)), source_(std::move(source)) {
    if (!j_.is_object())
      fail(where_.empty() ? "the config must be a mapping"
                          : "'" + where_ + "' must be a mapping, got " + j_.type_name());
  }

  [[noreturn]] void fail(const std::string& msg) const { throw_error<ConfigError>("train", source_ + ": " + msg); }
  std::string path(const std::string& key) const { return where_.empty() ? key : where_ + "." + key; }
  bool has(const std::string& key) {
    seen_.insert(key);
    return j_.contains(key) && !j_[key].is_null();
  }
  const json& raw(const std::string& key) {
    seen_.insert(key);
    return j_.at(key);
  }

  template <typename T>
  void get(const std::string& key, T& out) {
    if (!has(key)) return;
    const json& v = j_[key];
    bool ok = true;
    if constexpr (std::is_same_v<T, bool>)
      ok = v.is_boolean();
    else if constexpr (std::is_same_v<T, std::string>)
      ok = v.is_string();
    else if constexpr (std::is_integral_v<T>)
      ok = v.is_number_integer();
    else if constexpr (std::is_floating_point_v<T>)
      ok = v.is_number();
    if (!ok) fail("'" + path(key) + "' must be " + expected<T>() + ", got " + v.type_name() + " " + v.dump());
    if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool>) {
      if (std::is_unsigned_v<T> && v.get<int64_t>() < 0) fail("'" + path(key) + "' must be non-negative");
    }
    out = v.get<T>();
  }
  void get(const std::string& key, std::optional<double>& out) {
    if (!has(key)) return;
    double d = 0;
    get(key, d);
    out = d;
  }
  void get(const std::string& key, std::vector<std::string>& out) {
    if (!has(key)) return;
    const json& v = j_[key];
    if (v.is_string()) {
      out = {v.get<std::string>()};
      return;
    }
    if (!v.is_array()) fail("'" + path(key) + "' must be a list of strings, got " + v.type_name());
    out.clear();
    for (const auto& e : v) {
      if (!e.is_string()) fail("'" + path(key) + "' must be a list of strings, found " + e.dump());
      out.push_back(e.get<std::string>());
    }
  }
  // Unknown keys are typos: reject them with the known ones listed.
  void done() const {
    for (const auto& kv : j_.items())
      if (!seen_.count(kv.key())) {
        std::string known;
        for (const auto& k : seen_) known += (known.empty() ? "" : ", ") + k;
        fail("unknown key '" + path(kv.key()) + "' (known: " + known + ")");
      }
  }

 private:
  template <typename T>
  static std::string expected() {
    if constexpr (std::is_same_v<T, bool>)
      return "a boolean";
    else if constexpr (std::is_same_v<T, std::string>)
      return "a string";
    else if constexpr (std::is_integral_v<T>)
      return "an integer";
    else
      return "a number";
  }
  const json& j_;
  std::string where_, source_;
  std::set<std::string> seen_;
};

std::string indexed(const std::string& key, size_t i) { return key + "[" + std::to_string(i) + "]"; }

// `compose`: the spec (text or mapping), its module names against `modules`, and per-task
// module lists (they may not name members); route keys and arities: check_routing.
std::string parse_compose(const json& v, const TrainConfig& c, const std::string& source) {
  if (c.continual.enabled)
    throw_error<ConfigError>("train",
                             source + ": 'compose': not supported with continual learning (continual.enabled)");
  SpecNode spec;
  try {
    if (v.is_string()) {
      if (v.get<std::string>().find_first_not_of(" \t\r\n") == std::string::npos)
        throw_error<ConfigError>("train", source + ": 'compose': must not be empty");
      spec = parse_spec(v.get<std::string>());
    } else if (v.is_object()) {
      spec = parse_spec_json(v);
    } else {
      throw_error<ConfigError>(
          "train", source + ": 'compose': " +
                       std::string("must be a spec string (\"fuse(a, b)\") or a mapping ({fuse: [a, b]}), got ") +
                       v.type_name());
    }
    std::set<std::string> known;
    for (const auto& m : c.modules) known.insert(m.name);
    check_module_names(spec, known);
  } catch (const SpecError& e) {
    throw_error<ConfigError>("train", source + ": 'compose': " + e.what());
  }
  auto members = module_names(spec);
  for (size_t i = 0; i < c.tasks.size(); ++i)
    for (const auto& m : c.tasks[i].modules)
      if (std::find(members.begin(), members.end(), m) != members.end())
        throw_error<ConfigError>(
            "train", source + ": '" + indexed("tasks", i) + ".modules' names '" + m +
                         "', a member of 'compose': the composition is on for every task (use route(task, ...) to "
                         "choose modules per task); per-task lists may name only modules outside the spec");
  return to_string(spec);
}

void check(bool ok, const std::string& source, const std::string& msg) {
  if (!ok) throw_error<ConfigError>("train", source + ": " + msg);
}

TaskConfig parse_task(const json& j, const std::string& where, const std::string& source) {
  Fields f(j, where, source);
  TaskConfig t;
  f.get("name", t.name);
  std::string type;
  if (!f.has("type"))
    f.fail("'" + f.path("type") + "' is missing (causal_lm, masked_lm, sequence_classification, token_classification)");
  f.get("type", type);
  try {
    t.type = task_type_from_string(type);
  } catch (const ConfigError& e) {
    f.fail("'" + f.path("type") + "': " + e.what());
  }
  f.get("train", t.train);
  f.get("eval", t.eval);
  f.get("text_field", t.text_field);
  f.get("text_pair_field", t.text_pair_field);
  f.get("label_field", t.label_field);
  f.get("prompt_field", t.prompt_field);
  f.get("completion_field", t.completion_field);
  f.get("tokens_field", t.tokens_field);
  f.get("tags_field", t.tags_field);
  f.get("labels", t.labels);
  f.get("max_length", t.max_length);
  f.get("mlm_probability", t.mlm_probability);
  f.get("modules", t.modules);
  f.get("weight", t.weight);
  f.done();
  if (t.name.empty()) t.name = to_string(t.type);
  check(t.max_length >= 2, source, "'" + f.path("max_length") + "' must be >= 2");
  check(t.mlm_probability > 0 && t.mlm_probability < 1, source,
        "'" + f.path("mlm_probability") + "' must be in (0, 1)");
  check(t.weight > 0, source, "'" + f.path("weight") + "' must be positive");
  return t;
}

ModuleSpec parse_module(const json& j, const std::string& where, const std::string& source) {
  Fields f(j, where, source);
  ModuleSpec m;
  f.get("name", m.name);
  f.get("path", m.path);
  f.get("trainable", m.trainable);
  if (f.has("config")) {
    m.config = f.raw("config");
    if (!m.config.is_object()) f.fail("'" + f.path("config") + "' must be a mapping (a PEFT-style adapter_config)");
  }
  f.done();
  if (m.name.empty()) f.fail("'" + f.path("name") + "' is missing");
  if (m.name.find('.') != std::string::npos)
    f.fail("'" + f.path("name") + "' must not contain '.' (got '" + m.name + "')");
  if (m.path.empty() == m.config.is_null())
    f.fail("'" + where + "' needs exactly one of 'config' (a fresh module) or 'path' (a module folder)");
  return m;
}

void parse_optim(const json& j, OptimConfig& o, const std::string& source) {
  Fields f(j, "optim", source);
  f.get("lr", o.lr);
  f.get("lr_modules", o.lr_modules);
  f.get("lr_routers", o.lr_routers);
  f.get("lr_heads", o.lr_heads);
  f.get("lr_backbone", o.lr_backbone);
  f.get("weight_decay", o.weight_decay);
  if (f.has("betas")) {
    const json& b = f.raw("betas");
    if (!b.is_array() || b.size() != 2 || !b[0].is_number() || !b[1].is_number())
      f.fail("'optim.betas' must be a list of two numbers");
    o.beta1 = b[0].get<double>();
    o.beta2 = b[1].get<double>();
  }
  f.get("eps", o.eps);
  f.get("schedule", o.schedule);
  f.get("warmup_steps", o.warmup_steps);
  f.get("min_lr_ratio", o.min_lr_ratio);
  f.get("max_steps", o.max_steps);
  f.get("batch_size", o.batch_size);
  f.get("grad_accum", o.grad_accum);
  f.get("max_grad_norm", o.max_grad_norm);
  f.get("activation_checkpointing", o.activation_checkpointing);
  if (f.has("bf16")) {
    const json& v = f.raw("bf16");
    if (v.is_boolean())
      o.bf16 = v.get<bool>() ? "true" : "false";
    else if (v == "auto")
      o.bf16 = "auto";
    else
      f.fail("'optim.bf16' must be true, false or auto, got " + v.dump());
  }
  f.done();
  auto positive = [&](double v, const char* key) {
    check(v > 0, source, std::string("'optim.") + key + "' must be positive");
  };
  positive(o.lr, "lr");
  for (auto [v, key] : {std::pair{o.lr_modules, "lr_modules"},
                        {o.lr_routers, "lr_routers"},
                        {o.lr_heads, "lr_heads"},
                        {o.lr_backbone, "lr_backbone"}})
    if (v) check(*v >= 0, source, std::string("'optim.") + key + "' must be >= 0");
  positive(static_cast<double>(o.max_steps), "max_steps");
  positive(static_cast<double>(o.batch_size), "batch_size");
  positive(static_cast<double>(o.grad_accum), "grad_accum");
  check(o.weight_decay >= 0, source, "'optim.weight_decay' must be >= 0");
  check(o.beta1 >= 0 && o.beta1 < 1 && o.beta2 >= 0 && o.beta2 < 1, source, "'optim.betas' must be in [0, 1)");
  check(o.warmup_steps >= 0, source, "'optim.warmup_steps' must be >= 0");
  check(o.max_grad_norm >= 0, source, "'optim.max_grad_norm' must be >= 0 (0 = no clipping)");
  check(o.min_lr_ratio >= 0 && o.min_lr_ratio <= 1, source, "'optim.min_lr_ratio' must be in [0, 1]");
  check(o.schedule == "constant" || o.schedule == "linear" || o.schedule == "cosine", source,
        "'optim.schedule' must be constant, linear or cosine, got '" + o.schedule + "'");
}

// Paths relative to the config file's folder.
std::string resolve(const std::string& base, const std::string& p) {
  if (p.empty() || p[0] == '/' || base.empty() || base == ".") return p;
  return fs::join(base, p);
}

}  // namespace

TaskType task_type_from_string(const std::string& s) {
  if (s == "causal_lm") return TaskType::CausalLM;
  if (s == "masked_lm") return TaskType::MaskedLM;
  if (s == "sequence_classification") return TaskType::SequenceClassification;
  if (s == "token_classification") return TaskType::TokenClassification;
  throw ConfigError("unknown task type '" + s +
                    "' (causal_lm, masked_lm, sequence_classification, token_classification)");
}

std::string to_string(TaskType t) {
  switch (t) {
    case TaskType::CausalLM:
      return "causal_lm";
    case TaskType::MaskedLM:
      return "masked_lm";
    case TaskType::SequenceClassification:
      return "sequence_classification";
    case TaskType::TokenClassification:
      return "token_classification";
  }
  return "?";
}

const TaskConfig& TrainConfig::task(const std::string& name) const {
  for (const auto& t : tasks)
    if (t.name == name) return t;
  throw_error<ConfigError>("train", source + ": no task named '" + name + "'");
}

TrainConfig parse_train_config(const json& j, const std::string& source) {
  TrainConfig c;
  c.source = source;
  Fields f(j, "", source);
  if (!f.has("model")) f.fail("'model' is missing (an HF model folder)");
  f.get("model", c.model);
  f.get("tokenizer", c.tokenizer);
  f.get("init", c.init);
  f.get("init_std", c.init_std);
  f.get("output", c.output);
  f.get("device", c.device);
  f.get("seed", c.seed);
  f.get("train_backbone", c.train_backbone);
  f.get("save_model", c.save_model);
  f.get("log_every", c.log_every);
  if (f.has("modules")) {
    const json& m = f.raw("modules");
    if (!m.is_array()) f.fail("'modules' must be a list");
    for (size_t i = 0; i < m.size(); ++i) c.modules.push_back(parse_module(m[i], indexed("modules", i), source));
  }
  if (!f.has("tasks")) f.fail("'tasks' is missing (a list of tasks)");
  const json& tasks = f.raw("tasks");
  if (!tasks.is_array() || tasks.empty()) f.fail("'tasks' must be a non-empty list");
  for (size_t i = 0; i < tasks.size(); ++i) c.tasks.push_back(parse_task(tasks[i], indexed("tasks", i), source));
  if (f.has("metadata")) c.metadata = detail::parse_metadata(f.raw("metadata"), source);
  if (f.has("optim")) parse_optim(f.raw("optim"), c.optim, source);
  if (f.has("eval")) {
    Fields e(f.raw("eval"), "eval", source);
    e.get("every", c.eval.every);
    e.get("patience", c.eval.patience);
    e.get("batch_size", c.eval.batch_size);
    e.get("max_examples", c.eval.max_examples);
    e.done();
    check(c.eval.every >= 0 && c.eval.patience >= 0 && c.eval.batch_size > 0 && c.eval.max_examples >= 0, source,
          "'eval' values must be non-negative (batch_size positive)");
  }
  if (f.has("multitask")) {
    Fields m(f.raw("multitask"), "multitask", source);
    m.get("sampling", c.multitask.sampling);
    m.get("temperature", c.multitask.temperature);
    m.done();
    const auto& s = c.multitask.sampling;
    check(s == "proportional" || s == "temperature" || s == "uniform", source,
          "'multitask.sampling' must be proportional, temperature or uniform, got '" + s + "'");
    check(c.multitask.temperature > 0, source, "'multitask.temperature' must be positive");
  }
  if (f.has("continual")) {
    Fields m(f.raw("continual"), "continual", source);
    m.get("enabled", c.continual.enabled);
    m.get("full_finetune_baseline", c.continual.full_finetune_baseline);
    m.get("shared_module_baseline", c.continual.shared_module_baseline);
    if (m.has("module")) c.continual.module = m.raw("module");
    m.done();
    if (!c.continual.module.is_null() && !c.continual.module.is_object())
      m.fail("'continual.module' must be a mapping");
  }
  const json* compose = f.has("compose") ? &f.raw("compose") : nullptr;
  if (f.has("checkpoint")) {
    Fields m(f.raw("checkpoint"), "checkpoint", source);
    m.get("every", c.checkpoint.every);
    m.get("keep", c.checkpoint.keep);
    m.done();
    check(c.checkpoint.every >= 0, source, "'checkpoint.every' must be >= 0");
    check(c.checkpoint.keep >= 1, source, "'checkpoint.keep' must be >= 1");
  }
  f.done();

  check(c.init == "pretrained" || c.init == "random", source,
        "'init' must be pretrained or random, got '" + c.init + "'");
  check(c.init_std > 0, source, "'init_std' must be positive");
  check(c.log_every >= 1, source, "'log_every' must be >= 1");
  check(!c.output.empty(), source, "'output' must not be empty");
  std::set<std::string> names;
  for (const auto& t : c.tasks) check(names.insert(t.name).second, source, "task name '" + t.name + "' is used twice");
  std::set<std::string> modules;
  for (const auto& m : c.modules)
    check(modules.insert(m.name).second, source, "module name '" + m.name + "' is used twice");
  for (const auto& t : c.tasks)
    for (const auto& m : t.modules)
      check(modules.count(m), source, "task '" + t.name + "' uses module '" + m + "', which is not in 'modules'");
  if (c.continual.enabled)
    check(c.modules.empty(), source,
          "continual learning creates one module per task: leave 'modules' empty (set 'continual.module')");
  if (compose) c.compose = parse_compose(*compose, c, source);
  check_routing(c, /*folders=*/false);
  return c;
}

TrainConfig load_train_config(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw_error<ConfigError>("train", "cannot open config " + path);
  std::stringstream ss;
  ss << in.rdbuf();
  std::string ext = fs::extension(path);
  json j;
  if (ext == ".yaml" || ext == ".yml") {
    try {
      j = io::yaml_to_json(ss.str(), path);
    } catch (const std::invalid_argument& e) {
      throw ConfigError(std::string("[train] ") + e.what());
    }
  } else {
    try {
      j = parse_json(ss.str());
    } catch (const JsonTextError& e) {
      throw_error<ConfigError>("train", path + ": invalid JSON: " + e.what());
    }
  }
  TrainConfig c = parse_train_config(j, path);
  std::string base = fs::parent(path);
  c.model = resolve(base, c.model);
  c.tokenizer = resolve(base, c.tokenizer);
  c.output = resolve(base, c.output);
  for (auto& m : c.modules) m.path = resolve(base, m.path);
  for (auto& t : c.tasks) {
    t.train = resolve(base, t.train);
    t.eval = resolve(base, t.eval);
  }
  return c;
}

}  // namespace modula::train
