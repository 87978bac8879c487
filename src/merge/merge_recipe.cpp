// Merge recipes: parsing (YAML/JSON, mergekit layout) and the streaming merge run.
#include "modula/merge/merge_recipe.h"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <climits>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <set>
#include <sstream>

#include "modula/backbone/registry.h"
#include "modula/io/hf_config.h"
#include "modula/io/yaml.h"
#include "modula/merge/task_vectors.h"
#include "modula/util/dtype.h"
#include "modula/util/error.h"
#include "modula/util/fs.h"
#include "modula/util/json.h"

namespace modula {
namespace {

using json = nlohmann::json;

constexpr std::string_view kMergeRecipeTag = "merge";

std::string join_names(const std::vector<std::string>& names) {
  std::string s;
  for (const auto& n : names) s += (s.empty() ? "" : ", ") + n;
  return s;
}

std::string resolve(const std::string& base_dir, const std::string& path) {
  return path.empty() || path[0] == '/' ? path : fs::join(base_dir, path);
}

// --- recipe fields -----------------------------------------------------------------------

const std::set<std::string> kTopKeys = {"merge_method", "base_model",       "models", "parameters",
                                        "dtype",        "tokenizer_source", "output", "seed",
                                        "weights",      "densities",        "name",   "description"};
const std::set<std::string> kMethodParams = {"normalize", "lambda", "consensus", "rescale", "filter_wise"};
const std::set<std::string> kTensorParams = {"weight", "density", "t"};

bool takes_weight(const std::string& m) { return m != "slerp" && m != "model_stock"; }
bool takes_density(const std::string& m) { return m == "ties" || m == "dare_linear" || m == "dare_ties"; }

template <typename T>
T get_as(const json& v, const std::string& field, const char* expected) {
  try {
    return v.get<T>();
  } catch (const json::exception&) {
    throw_error(kMergeRecipeTag, field + ": expected " + expected + ", got " + v.dump());
  }
}

double number(const json& v, const std::string& field) {
  if (!v.is_number()) throw_error(kMergeRecipeTag, field + ": expected a number, got " + v.dump());
  double d = v.get<double>();
  if (!std::isfinite(d)) throw_error(kMergeRecipeTag, field + ": must be finite");
  return d;
}

// The tensor parameter `name` in `params` (per model or top level): checks it applies to the method.
void add_tensor_param(std::map<std::string, ParamValue>& out, const std::string& name, const json& v,
                      const std::string& field, const std::string& method) {
  if (!kTensorParams.count(name))
    throw_error(
        kMergeRecipeTag,
        field + ": unknown parameter (known: weight, density, t, normalize, lambda, consensus, rescale, filter_wise)");
  if (name == "weight" && !takes_weight(method))
    throw_error(kMergeRecipeTag, field + ": merge_method " + method + " takes no weight");
  if (name == "density" && !takes_density(method))
    throw_error(kMergeRecipeTag,
                field + ": merge_method " + method + " takes no density (ties, dare_linear, dare_ties do)");
  if (name == "t" && method != "slerp") throw_error(kMergeRecipeTag, field + ": only slerp takes t");
  out.emplace(name, ParamValue::parse(v, field));
}

// --- the streaming run -------------------------------------------------------------------

struct ModelSource {
  std::string field;  // "base_model", "models[1].model"
  std::string path;
  io::ModelConfig config;
  std::shared_ptr<io::Checkpoint> ckpt;
};

ModelSource open_source(const std::string& field, const std::string& path) {
  if (!fs::is_dir(path)) throw_error(kMergeRecipeTag, field + ": '" + path + "' is not a folder");
  ModelSource s{field, path, {}, nullptr};
  try {
    s.config = io::load_hf_config(path);
    s.ckpt = std::make_shared<io::Checkpoint>(io::Checkpoint::open(path));
  } catch (const std::exception& e) {
    throw_error(kMergeRecipeTag, field + ": " + e.what());
  }
  return s;
}

std::string strip_first(const std::string& key) {
  auto dot = key.find('.');
  return dot == std::string::npos ? key : key.substr(dot + 1);
}

// The model tensor `name` in a checkpoint (HF key, or the bare model's key).
torch::Tensor tensor_of(const ModelSource& s, const std::string& name) {
  if (s.ckpt->contains(name)) return s.ckpt->get(name);
  if (s.ckpt->contains(strip_first(name))) return s.ckpt->get(strip_first(name));
  throw_error(kMergeRecipeTag, s.field + " ('" + s.path + "') has no tensor '" + name + "'");
}

// Relative depth of a tensor for gradients: layer i of L -> i / (L−1); embeddings 0, the
// rest outside the layers (final norm, head) 1.
double depth_of(const std::string& name, int64_t num_layers) {
  for (size_t i = 0; i + 1 < name.size(); ++i) {
    if (name[i] != '.' || !std::isdigit(static_cast<unsigned char>(name[i + 1]))) continue;
    size_t j = i + 1;
    while (j < name.size() && std::isdigit(static_cast<unsigned char>(name[j]))) ++j;
    if (j < name.size() && name[j] != '.') continue;
    double layer = std::stod(name.substr(i + 1, j - i - 1));
    return num_layers > 1 ? std::min(1.0, layer / static_cast<double>(num_layers - 1)) : 0.0;
  }
  bool embedding = name.find("embed") != std::string::npos || name.find("wte") != std::string::npos ||
                   name.find("wpe") != std::string::npos;
  return embedding ? 0.0 : 1.0;
}

std::string real_path(const std::string& p) {
  char buf[PATH_MAX];
  return ::realpath(p.c_str(), buf) ? std::string(buf) : p;
}

const std::vector<std::string>& tokenizer_files() {
  static const std::vector<std::string> files = {"tokenizer.json",
                                                 "tokenizer_config.json",
                                                 "special_tokens_map.json",
                                                 "tokenizer.model",
                                                 "sentencepiece.bpe.model",
                                                 "vocab.json",
                                                 "merges.txt",
                                                 "vocab.txt",
                                                 "added_tokens.json",
                                                 "generation_config.json"};
  return files;
}

}  // namespace

// --- ParamValue --------------------------------------------------------------------------

ParamValue ParamValue::parse(const json& v, const std::string& field) {
  ParamValue p;
  p.field_ = field;
  auto anchors = [&](const json& x, const std::string& f) {
    std::vector<double> a;
    if (x.is_number()) return std::vector<double>{number(x, f)};
    if (!x.is_array() || x.empty())
      throw_error(kMergeRecipeTag, f + ": expected a number or a non-empty list of numbers, got " + x.dump());
    for (size_t i = 0; i < x.size(); ++i) a.push_back(number(x[i], f + "[" + std::to_string(i) + "]"));
    return a;
  };
  if (v.is_array() && !v.empty() && v[0].is_object()) {
    for (size_t i = 0; i < v.size(); ++i) {
      std::string f = field + "[" + std::to_string(i) + "]";
      const auto& rule = v[i];
      if (!rule.is_object() || !rule.contains("value"))
        throw_error(kMergeRecipeTag, f + ": expected {filter: <name part>, value: ...}");
      for (const auto& kv : rule.items())
        if (kv.key() != "filter" && kv.key() != "value")
          throw_error(kMergeRecipeTag, f + "." + kv.key() + ": unknown key (filter, value)");
      std::string filter =
          rule.contains("filter") ? get_as<std::string>(rule["filter"], f + ".filter", "a string") : "";
      p.rules_.push_back({filter, anchors(rule["value"], f + ".value")});
    }
  } else {
    p.rules_.push_back({"", anchors(v, field)});
  }
  return p;
}

double ParamValue::at(const std::string& tensor, double depth) const {
  for (const auto& r : rules_) {
    if (!r.filter.empty() && tensor.find(r.filter) == std::string::npos) continue;
    const auto& a = r.anchors;
    if (a.size() == 1) return a[0];
    double pos = std::clamp(depth, 0.0, 1.0) * static_cast<double>(a.size() - 1);  // linear interpolation
    auto i = std::min(static_cast<size_t>(pos), a.size() - 2);
    return a[i] + (a[i + 1] - a[i]) * (pos - static_cast<double>(i));
  }
  throw_error(kMergeRecipeTag, field_ + ": no entry matches tensor '" + tensor + "' (add one without a filter)");
}

// --- parsing -----------------------------------------------------------------------------

MergeRecipe parse_recipe(const json& j, const std::string& base_dir) {
  if (!j.is_object())
    throw_error(kMergeRecipeTag, "the recipe must be a mapping with merge_method and models, got " + j.dump());
  for (const auto& kv : j.items())
    if (!kTopKeys.count(kv.key()))
      throw_error(kMergeRecipeTag,
                  kv.key() +
                      ": unknown key (known: merge_method, base_model, models, parameters, dtype, tokenizer_source, "
                      "output, seed, weights, densities)");
  MergeRecipe r;
  r.source = j;
  if (!j.contains("merge_method"))
    throw_error(kMergeRecipeTag, "merge_method: missing (" + join_names(model_merge_methods()) + ")");
  const auto method = get_as<std::string>(j["merge_method"], "merge_method", "a string");
  auto methods = model_merge_methods();
  if (std::find(methods.begin(), methods.end(), method) == methods.end())
    throw_error(kMergeRecipeTag, "merge_method: '" + method + "' is not known (" + join_names(methods) + ")");
  r.options.method(method);

  if (j.contains("base_model") && !j["base_model"].is_null())
    r.base_model = resolve(base_dir, get_as<std::string>(j["base_model"], "base_model", "a folder path"));
  if (j.contains("parameters")) {
    const auto& params = j["parameters"];
    if (!params.is_object()) throw_error(kMergeRecipeTag, "parameters: expected a mapping, got " + params.dump());
    for (const auto& [name, v] : params.items()) {
      std::string f = "parameters." + name;
      if (name == "normalize")
        r.options.normalize(get_as<bool>(v, f, "true or false"));
      else if (name == "lambda")
        r.options.lambda(number(v, f));
      else if (name == "consensus")
        r.options.consensus(get_as<std::string>(v, f, "\"sum\" or \"count\""));
      else if (name == "rescale")
        r.options.rescale(get_as<bool>(v, f, "true or false"));
      else if (name == "filter_wise")
        r.options.filter_wise(get_as<bool>(v, f, "true or false"));
      else
        add_tensor_param(r.parameters, name, v, f, method);
    }
  }
  try {
    r.options.validate();
  } catch (const std::invalid_argument& e) {
    throw_error(kMergeRecipeTag, std::string("parameters: ") + e.what());
  }

  if (!j.contains("models") || !j["models"].is_array() || j["models"].empty())
    throw_error(kMergeRecipeTag, "models: expected a non-empty list of {model: <folder>, parameters: {...}}");
  const auto& models = j["models"];
  for (size_t i = 0; i < models.size(); ++i) {
    std::string f = "models[" + std::to_string(i) + "]";
    const auto& m = models[i];
    RecipeModel rm;
    if (m.is_string()) {
      rm.path = resolve(base_dir, m.get<std::string>());
    } else if (m.is_object()) {
      for (const auto& kv : m.items())
        if (kv.key() != "model" && kv.key() != "parameters")
          throw_error(kMergeRecipeTag, f + "." + kv.key() + ": unknown key (model, parameters)");
      if (!m.contains("model")) throw_error(kMergeRecipeTag, f + ".model: missing (the model's folder)");
      rm.path = resolve(base_dir, get_as<std::string>(m["model"], f + ".model", "a folder path"));
      if (m.contains("parameters")) {
        if (!m["parameters"].is_object())
          throw_error(kMergeRecipeTag, f + ".parameters: expected a mapping, got " + m["parameters"].dump());
        for (const auto& [name, v] : m["parameters"].items())
          add_tensor_param(rm.parameters, name, v, f + ".parameters." + name, method);
      }
    } else {
      throw_error(kMergeRecipeTag,
                  f + ": expected a folder path or {model: <folder>, parameters: {...}}, got " + m.dump());
    }
    if (rm.path.empty()) throw_error(kMergeRecipeTag, f + ".model: empty path");
    r.models.push_back(std::move(rm));
  }
  for (const char* list : {"weights", "densities"}) {  // sugar: one entry per model, in order
    if (!j.contains(list)) continue;
    std::string name = std::string(list) == "weights" ? "weight" : "density";
    const auto& v = j[list];
    if (!v.is_array()) throw_error(kMergeRecipeTag, std::string(list) + ": expected a list with one entry per model");
    if (v.size() != r.models.size())
      throw_error(kMergeRecipeTag, std::string(list) + ": " + std::to_string(v.size()) + " entries for " +
                                       std::to_string(r.models.size()) + " models");
    for (size_t i = 0; i < v.size(); ++i) {
      std::string f = std::string(list) + "[" + std::to_string(i) + "]";
      if (r.models[i].parameters.count(name))
        throw_error(kMergeRecipeTag, f + ": models[" + std::to_string(i) + "] sets " + name + " already");
      add_tensor_param(r.models[i].parameters, name, v[i], f, method);
    }
  }

  // Task-vector methods, slerp and model_stock merge the other models against the base; the
  // base listed among the models (mergekit style) is not one of them.
  if (method_needs_base(method)) {
    if (r.base_model.empty())
      throw_error(kMergeRecipeTag, "base_model: merge_method " + method + " needs a base_model");
    r.models.erase(
        std::remove_if(r.models.begin(), r.models.end(), [&](const RecipeModel& m) { return m.path == r.base_model; }),
        r.models.end());
    if (r.models.empty()) throw_error(kMergeRecipeTag, "models: no model besides the base_model");
  }
  if (method == "slerp" && r.models.size() != 1)
    throw_error(kMergeRecipeTag, "models: slerp interpolates the base_model with exactly one other model, got " +
                                     std::to_string(r.models.size()));
  if (method == "model_stock" && r.models.size() < 2)
    throw_error(kMergeRecipeTag, "models: model_stock needs at least two models besides the base_model, got " +
                                     std::to_string(r.models.size()));
  if (method == "slerp" && !r.parameters.count("t"))
    throw_error(kMergeRecipeTag, "parameters.t: slerp needs t (0: base_model, 1: the other model)");
  if (takes_weight(method))
    for (size_t i = 0; i < r.models.size(); ++i)
      if (!r.models[i].parameters.count("weight") && !r.parameters.count("weight"))
        throw_error(kMergeRecipeTag, "models[" + std::to_string(i) + "].parameters.weight: missing ('" +
                                         r.models[i].path + "'; merge_method " + method +
                                         " needs a weight per model, or a default in parameters.weight)");

  if (j.contains("dtype")) {
    r.dtype = get_as<std::string>(j["dtype"], "dtype", "a string");
    float_dtype(r.dtype, kMergeRecipeTag, "dtype");
  }
  r.tokenizer_source = r.base_model.empty() ? r.models[0].path : r.base_model;
  if (j.contains("tokenizer_source")) {
    auto t = get_as<std::string>(j["tokenizer_source"], "tokenizer_source", "a string");
    r.tokenizer_source = t == "none" ? "" : t == "base" ? r.tokenizer_source : resolve(base_dir, t);
  }
  if (j.contains("output")) r.output = resolve(base_dir, get_as<std::string>(j["output"], "output", "a folder path"));
  if (j.contains("seed")) {
    if (!j["seed"].is_number_integer() || j["seed"].get<int64_t>() < 0)
      throw_error(kMergeRecipeTag, "seed: expected an integer >= 0");
    r.seed = j["seed"].get<uint64_t>();
  }
  return r;
}

MergeRecipe load_recipe(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw_error(kMergeRecipeTag, "cannot open recipe " + path);
  std::stringstream text;
  text << in.rdbuf();
  json j;
  if (fs::extension(path) == ".json") {
    try {
      j = parse_json(text.str());
    } catch (const JsonTextError& e) {
      throw_error(kMergeRecipeTag, path + ": invalid JSON: " + e.what());
    }
  } else {
    try {
      j = io::yaml_to_json(text.str(), path);
    } catch (const std::invalid_argument& e) {
      throw_error(kMergeRecipeTag, e.what());
    }
  }
  try {
    return parse_recipe(j, fs::parent(path));
  } catch (const std::invalid_argument& e) {
    throw std::invalid_argument(std::string(e.what()) + " (in " + path + ")");
  }
}

// --- run ---------------------------------------------------------------------------------

MergeReport run_merge(const MergeRecipe& r, const std::string& output_override) {
  MergeReport report;
  report.output = output_override.empty() ? r.output : output_override;
  if (report.output.empty())
    throw_error(kMergeRecipeTag, "output: no output folder (set output in the recipe or pass -o)");
  const auto method = r.options.method();

  std::optional<ModelSource> base;
  if (!r.base_model.empty()) base = open_source("base_model", r.base_model);
  std::vector<ModelSource> models;
  for (size_t i = 0; i < r.models.size(); ++i)
    models.push_back(open_source("models[" + std::to_string(i) + "].model", r.models[i].path));
  const ModelSource& ref = base ? *base : models[0];
  for (const auto& m : models)
    if (m.config.model_type != ref.config.model_type)
      throw_error(kMergeRecipeTag, m.field + ": model_type '" + m.config.model_type + "' ('" + m.path +
                                       "') differs from " + ref.field + "'s '" + ref.config.model_type + "'");
  auto out_real = real_path(report.output);
  for (const ModelSource* s : [&] {
         std::vector<const ModelSource*> all;
         if (base) all.push_back(&*base);
         for (const auto& m : models) all.push_back(&m);
         return all;
       }())
    if (real_path(s->path) == out_real)
      throw_error(kMergeRecipeTag, "output: '" + report.output + "' is an input folder (" + s->field + ")");

  auto model = create_backbone(ref.config);
  auto gen = seeded_generator(r.seed);
  auto param = [&](const RecipeModel& m, const std::string& name, const std::string& tensor, double depth,
                   double dflt) {
    auto it = m.parameters.find(name);
    if (it != m.parameters.end()) return it->second.at(tensor, depth);
    auto top = r.parameters.find(name);
    return top != r.parameters.end() ? top->second.at(tensor, depth) : dflt;
  };
  const int64_t num_layers = ref.config.num_hidden_layers;
  torch::NoGradGuard no_grad;
  auto merge_into = [&](const std::string& name, torch::Tensor& dst) {
    if (name.find(".adapters.") != std::string::npos) return;  // attached modules are no backbone weights
    torch::Tensor base_t = base ? tensor_of(*base, name) : torch::Tensor();
    if (base_t.defined() && base_t.sizes() != dst.sizes())
      throw_error(kMergeRecipeTag, "tensor '" + name + "': base_model ('" + base->path + "') has shape " +
                                       c10::str(base_t.sizes()) + ", the architecture expects " +
                                       c10::str(dst.sizes()));
    double depth = depth_of(name, num_layers);
    std::vector<MergeTerm> terms;
    for (size_t i = 0; i < models.size(); ++i) {
      auto t = tensor_of(models[i], name);
      if (t.sizes() != dst.sizes())
        throw_error(kMergeRecipeTag, "tensor '" + name + "': " + models[i].field + " ('" + models[i].path +
                                         "') has shape " + c10::str(t.sizes()) + ", " +
                                         (base ? "base_model" : "the architecture") + " has " + c10::str(dst.sizes()));
      terms.push_back(
          {t, param(r.models[i], "weight", name, depth, 1.0), param(r.models[i], "density", name, depth, 1.0)});
    }
    if (!dst.is_floating_point()) {  // integer buffers (position ids): taken as they are
      dst.copy_(base_t.defined() ? base_t : terms[0].value);
      return;
    }
    double t = r.parameters.count("t") ? r.parameters.at("t").at(name, depth) : 0.5;
    dst.copy_(merge_tensor(r.options, base_t, terms, t, gen));
    report.tensors += 1;
    report.parameters += dst.numel();
  };
  try {
    for (auto& p : model->named_parameters()) merge_into(p.key(), p.value());
    for (auto& b : model->named_buffers()) merge_into(b.key(), b.value());
  } catch (const std::invalid_argument&) {
    throw;
  } catch (const std::exception& e) {
    throw_error(kMergeRecipeTag, method + ": " + e.what());
  }
  model->to(float_dtype(r.dtype, kMergeRecipeTag, "dtype"));
  // Large weights or lambda (1e308) overflow: refuse to write a checkpoint of inf/NaN.
  for (const auto& named : {model->named_parameters(), model->named_buffers()})
    for (const auto& p : named)
      if (p.value().is_floating_point() && !torch::isfinite(p.value()).all().item<bool>())
        throw_error(kMergeRecipeTag, "tensor '" + p.key() + "': the " + method + " merge gives NaN or infinite " +
                                         "values in " + r.dtype +
                                         " (check the weights, lambda and t); nothing written");
  // The side files first and config.json (written last by save_backbone) as the commit
  // marker: a folder cut off by a kill has no config.json, so every loader rejects it.
  fs::make_dirs(report.output);
  if (!r.tokenizer_source.empty())
    for (const auto& f : tokenizer_files()) {
      auto from = fs::join(r.tokenizer_source, f);
      if (!fs::is_file(from)) continue;
      fs::copy_file(from, fs::join(report.output, f));
      report.copied_files.push_back(f);
    }
  {
    const auto recipe = fs::join(report.output, "merge_recipe.json");
    fs::write_file(recipe, r.source.dump(2) + "\n");
  }
  save_backbone(*model, report.output);
  return report;
}

}  // namespace modula
