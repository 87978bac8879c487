// The run output folder read back: run_config.json (to_json / load_run) and the heads.
#include "modula/train/run_output.h"

#include <filesystem>
#include <fstream>

#include "modula/io/safetensors.h"
#include "modula/util/error.h"
#include "modula/util/fs.h"
#include "modula/util/json.h"

namespace modula::train {
namespace {

using json = nlohmann::json;

constexpr std::string_view kRunOutputTag = "train";

std::string absolute(const std::string& p) {
  if (p.empty()) return p;
  return std::filesystem::absolute(p).lexically_normal().string();
}

json task_json(const TaskConfig& t) {
  json j = {{"name", t.name},
            {"type", to_string(t.type)},
            {"text_field", t.text_field},
            {"label_field", t.label_field},
            {"prompt_field", t.prompt_field},
            {"completion_field", t.completion_field},
            {"tokens_field", t.tokens_field},
            {"tags_field", t.tags_field},
            {"max_length", t.max_length},
            {"mlm_probability", t.mlm_probability},
            {"weight", t.weight}};
  if (!t.train.empty()) j["train"] = absolute(t.train);
  if (!t.eval.empty()) j["eval"] = absolute(t.eval);
  if (!t.text_pair_field.empty()) j["text_pair_field"] = t.text_pair_field;
  if (!t.labels.empty()) j["labels"] = t.labels;
  if (!t.modules.empty()) j["modules"] = t.modules;
  return j;
}

}  // namespace

json to_json(const TrainConfig& c) {
  json j = {{"model", absolute(c.model)},
            {"init", c.init},
            {"init_std", c.init_std},
            {"output", absolute(c.output)},
            {"device", c.device},
            {"seed", c.seed},
            {"train_backbone", c.train_backbone},
            {"save_model", c.save_model},
            {"log_every", c.log_every}};
  if (!c.tokenizer.empty()) j["tokenizer"] = absolute(c.tokenizer);
  json modules = json::array();
  for (const auto& m : c.modules) {
    json e = {{"name", m.name}, {"trainable", m.trainable}};
    if (m.path.empty())
      e["config"] = m.config;
    else
      e["path"] = absolute(m.path);
    modules.push_back(e);
  }
  if (!modules.empty()) j["modules"] = modules;
  j["tasks"] = json::array();
  for (const auto& t : c.tasks) j["tasks"].push_back(task_json(t));
  if (!c.metadata.empty()) {
    j["metadata"] = json::array();
    for (const auto& f : c.metadata) {
      json e = {{"field", f.name}};
      if (!f.values.empty()) e["values"] = f.values;
      j["metadata"].push_back(e);
    }
  }
  const auto& o = c.optim;
  json optim = {{"lr", o.lr},
                {"weight_decay", o.weight_decay},
                {"betas", {o.beta1, o.beta2}},
                {"eps", o.eps},
                {"schedule", o.schedule},
                {"warmup_steps", o.warmup_steps},
                {"min_lr_ratio", o.min_lr_ratio},
                {"max_steps", o.max_steps},
                {"batch_size", o.batch_size},
                {"grad_accum", o.grad_accum},
                {"max_grad_norm", o.max_grad_norm},
                {"bf16", o.bf16 == "auto" ? json("auto") : json(o.bf16 == "true")}};
  for (auto [v, key] : {std::pair{o.lr_modules, "lr_modules"},
                        {o.lr_routers, "lr_routers"},
                        {o.lr_heads, "lr_heads"},
                        {o.lr_backbone, "lr_backbone"}})
    if (v) optim[key] = *v;
  j["optim"] = optim;
  j["eval"] = {{"every", c.eval.every},
               {"patience", c.eval.patience},
               {"batch_size", c.eval.batch_size},
               {"max_examples", c.eval.max_examples}};
  j["multitask"] = {{"sampling", c.multitask.sampling}, {"temperature", c.multitask.temperature}};
  j["continual"] = {{"enabled", c.continual.enabled},
                    {"full_finetune_baseline", c.continual.full_finetune_baseline},
                    {"shared_module_baseline", c.continual.shared_module_baseline}};
  if (!c.continual.module.is_null()) j["continual"]["module"] = c.continual.module;
  j["checkpoint"] = {{"every", c.checkpoint.every}, {"keep", c.checkpoint.keep}};
  if (!c.compose.empty()) j["compose"] = c.compose;
  return j;
}

std::string continual_module_name(const std::string& task) {
  std::string s = task;
  for (char& c : s)
    if (c == '.') c = '_';
  return s;
}

RunOutput load_run(const std::string& run_or_config) {
  RunOutput r;
  if (fs::is_dir(run_or_config)) {
    const std::string file = fs::join(run_or_config, kRunConfigFile);
    if (!fs::is_file(file))
      throw_error<ConfigError>(kRunOutputTag, run_or_config + ": no " + kRunConfigFile +
                                                  ": not the output folder of `modula train` (or one written before it "
                                                  "saved its config); pass the run's config file instead");
    r.config = load_train_config(file);
    r.dir = run_or_config;
  } else {
    if (!fs::is_file(run_or_config))
      throw_error<ConfigError>(kRunOutputTag,
                               "cannot open run " + run_or_config + " (a run output folder or config file)");
    r.config = load_train_config(run_or_config);
    r.dir = r.config.output;
  }
  return r;
}

std::map<std::string, RunHead> load_heads(const std::string& heads_file) {
  const std::string meta_file = fs::join(fs::parent(heads_file), "heads.json");
  std::ifstream in(meta_file);
  if (!in)
    throw_error<ConfigError>(kRunOutputTag, "cannot open " + meta_file + " (the label names of " + heads_file + ")");
  json meta;
  try {
    meta = parse_json(in);
  } catch (const JsonTextError& e) {
    throw_error<ConfigError>(kRunOutputTag, meta_file + ": invalid JSON: " + e.what());
  }
  if (!meta.is_object()) throw_error<ConfigError>(kRunOutputTag, meta_file + ": expected {task: {type, labels}}");
  std::map<std::string, RunHead> out;
  for (const auto& [task, m] : meta.items()) {
    RunHead h;
    try {
      h.type = task_type_from_string(m.at("type").get<std::string>());
      h.labels = m.at("labels").get<std::vector<std::string>>();
    } catch (const std::exception& e) {
      throw_error<ConfigError>(kRunOutputTag, meta_file + ": task '" + task + "': " + e.what());
    }
    out[task] = h;
  }
  if (!fs::is_file(heads_file)) return out;  // no classification task in the run
  auto f = io::SafetensorsFile::open(heads_file);
  for (const auto& key : f.keys()) {
    auto dot = key.rfind('.');
    const std::string task = key.substr(0, dot), param = dot == std::string::npos ? "" : key.substr(dot + 1);
    auto it = out.find(task);
    if (it == out.end() || (param != "weight" && param != "bias"))
      throw_error<ConfigError>(kRunOutputTag,
                               heads_file + ": tensor '" + key + "' is no head of a task in " + meta_file);
    (param == "weight" ? it->second.weight : it->second.bias) = f.get(key).clone();
  }
  return out;
}

}  // namespace modula::train
