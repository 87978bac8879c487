#include "modula/composition/poly_lora.h"

#include <algorithm>
#include <cmath>
#include <set>
#include <stdexcept>

#include "modula/io/peft.h"
#include "modula/modules/lora.h"
#include "modula/modules/targets.h"
#include "modula/util/error.h"

namespace modula {
namespace {

using json = nlohmann::json;

constexpr std::string_view kPolyLoraTag = "poly";

int64_t config_int(const json& c, const char* key, int64_t fallback) {
  if (!c.contains(key) || c[key].is_null()) return fallback;
  if (!c[key].is_number_integer())
    throw_error(kPolyLoraTag, std::string("config key '") + key + "' must be an integer (got " + c[key].dump() + ")");
  return c[key].get<int64_t>();
}

}  // namespace

void PolyLoraOptions::validate() const {
  if (in_features() <= 0 || out_features() <= 0)
    throw_error(kPolyLoraTag, "in_features and out_features must be positive");
  if (r() <= 0) throw_error(kPolyLoraTag, "r must be positive (got " + std::to_string(r()) + ")");
  if (n_tasks() <= 0 || n_skills() <= 0 || n_splits() <= 0)
    throw_error(kPolyLoraTag, "n_tasks, n_skills and n_splits must be positive");
  if (!(lora_alpha() > 0) || !std::isfinite(lora_alpha()))
    throw_error(kPolyLoraTag, "lora_alpha must be a positive number (got " + std::to_string(lora_alpha()) + ")");
  if (in_features() % n_splits() || out_features() % n_splits())
    throw_error(kPolyLoraTag, "n_splits " + std::to_string(n_splits()) + " must divide in_features " +
                                  std::to_string(in_features()) + " and out_features " +
                                  std::to_string(out_features()));
}

PolyLoraImpl::PolyLoraImpl(const PolyLoraOptions& options_, std::shared_ptr<RoutingContext> context)
    : options(options_) {
  options.validate();
  const auto q = options.n_splits(), s = options.n_skills(), r = options.r();
  poly_lora_A = register_parameter("poly_lora_A", torch::empty({q, s, options.in_features() / q, r}));
  poly_lora_B = register_parameter("poly_lora_B", torch::zeros({q, s, r, options.out_features() / q}));
  poly_router = register_module(
      "poly_router",
      PolyRouter(PolyRouterOptions(options.n_tasks(), s).n_splits(q).key(options.key()).noise(options.routing_noise()),
                 std::move(context)));
  reset();
}

void PolyLoraImpl::reset() {
  // PEFT: every skill/split as nn.Linear's default init (kaiming-uniform a = sqrt 5), stored transposed.
  torch::NoGradGuard no_grad;
  for (int64_t q = 0; q < options.n_splits(); ++q)
    for (int64_t s = 0; s < options.n_skills(); ++s) {
      torch::nn::init::kaiming_uniform_(poly_lora_A[q][s].t(), std::sqrt(5.0));
      if (options.init_weights())
        poly_lora_B[q][s].zero_();
      else
        torch::nn::init::kaiming_uniform_(poly_lora_B[q][s].t(), std::sqrt(5.0));
    }
  poly_router->reset();
}

std::pair<torch::Tensor, torch::Tensor> PolyLoraImpl::combine_skills(const torch::Tensor& w) const {
  auto N = w.size(0);
  auto A = average_parameters(w, poly_lora_A).reshape({N, options.in_features(), options.r()});  // Σ_s w A[q, s]
  auto B = average_parameters(w, poly_lora_B).transpose(1, 2).reshape({N, options.r(), options.out_features()});
  return {A, B};
}

torch::Tensor PolyLoraImpl::averaged(const SiteInput& in, const torch::Tensor& w) {
  const auto& x = in.x;
  auto [A, B] =
      combine_skills(w.view({x.size(0), options.n_splits(), options.n_skills()}).to(poly_lora_A.scalar_type()));
  return torch::bmm(torch::bmm(x, A.to(x.scalar_type())), B.to(x.scalar_type())) *
         (options.lora_alpha() / static_cast<double>(options.r()));
}

torch::Tensor PolyLoraImpl::selected(const SiteInput&, const torch::Tensor&, const torch::Tensor&) {
  throw_error(kPolyLoraTag, "Polytropon skills combine by parameter averaging only (aggregation parameter_average)");
}
torch::Tensor PolyLoraImpl::mixed(const SiteInput& in, const torch::Tensor& w) { return selected(in, w, w); }

// Algorithm 1 with parameter aggregation (Ponti et al. 2022, eq. 5): y + (α / r) x (Σ w A)(Σ w B).
torch::Tensor PolyLoraImpl::transform_output(const torch::Tensor& x, const torch::Tensor& y, const LinearImpl& base) {
  auto x3 = as_rows(x, "poly");
  auto delta = algorithm1(*poly_router, *this, Aggregation::ParameterAverage, {x3, y, &base});
  return y + scale * delta.reshape(y.sizes());
}

void PolyLoraImpl::merge(LinearImpl&) {
  throw std::logic_error("[poly] the module depends on the task ids and cannot be merged into the weights");
}
void PolyLoraImpl::unmerge(LinearImpl&) { throw std::logic_error("[poly] not merged"); }

Adapter add_poly_adapter(Backbone& model, const json& config, std::shared_ptr<RoutingContext> context,
                         const std::string& name) {
  if (config.value("peft_type", std::string()) != "POLY")
    throw_error(kPolyLoraTag,
                "config peft_type must be \"POLY\" (got " + config.value("peft_type", json()).dump() + ")");
  auto poly_type = config.value("poly_type", json("poly"));
  if (poly_type != "poly") throw_error(kPolyLoraTag, "poly_type " + poly_type.dump() + " is not supported (\"poly\")");
  if (!context) throw_error(kPolyLoraTag, "a RoutingContext is needed for the task ids");
  // modula extension: the RoutingContext entry with the ids (a metadata field); written to
  // adapter_config.json only when it is not PEFT's "task".
  const json key =
      config.contains("routing_key") && !config["routing_key"].is_null() ? config["routing_key"] : json("task");
  if (!key.is_string() || key.get<std::string>().empty())
    throw_error(kPolyLoraTag,
                "config key 'routing_key' must name a RoutingContext entry (default \"task\"), got " + key.dump());
  // modula extension: routing_noise false routes training by σ(Z) (routing/poly.h); written
  // only when false.
  const json noise = config.contains("routing_noise") ? config["routing_noise"] : json(true);
  if (!noise.is_boolean())
    throw_error(kPolyLoraTag, "config key 'routing_noise' must be true or false, got " + noise.dump());
  Adapter a;
  a.name = name;
  a.peft_type = "POLY";
  a.config = config;
  if (key == "task") a.config.erase("routing_key");
  if (noise.get<bool>()) a.config.erase("routing_noise");
  // modula extension: lora_alpha (scaling α / r; PEFT POLY's is 1 / r); written only when not 1.
  const json alpha = config.contains("lora_alpha") ? config["lora_alpha"] : json(1.0);
  if (!alpha.is_number() || !(alpha.get<double>() > 0) || !std::isfinite(alpha.get<double>()))
    throw_error(kPolyLoraTag, "config key 'lora_alpha' must be a positive number (default 1: PEFT POLY's 1 / r), got " +
                                  alpha.dump());
  if (alpha.get<double>() == 1.0) a.config.erase("lora_alpha");
  for (auto& [path, layer] : select_sites(model, config)) {
    auto o = PolyLoraOptions(layer->options.in_features(), layer->options.out_features())
                 .r(config_int(config, "r", 8))
                 .n_tasks(config_int(config, "n_tasks", 1))
                 .n_skills(config_int(config, "n_skills", 4))
                 .n_splits(config_int(config, "n_splits", 1))
                 .init_weights(config.value("init_weights", true))
                 .key(key.get<std::string>())
                 .routing_noise(noise.get<bool>())
                 .lora_alpha(alpha.get<double>());
    if (layer->options.conv1d_layout())
      throw_error(kPolyLoraTag, "site " + path + " is a Conv1D layer; PEFT POLY supports nn.Linear only");
    try {
      o.validate();
    } catch (const std::invalid_argument& e) {
      throw_error(kPolyLoraTag, "site " + path + ": " + e.what());
    }
    auto poly = std::make_shared<PolyLoraImpl>(o, context);
    poly->to(layer->weight.device(), layer->weight.scalar_type());
    std::map<std::string, std::string> keys;
    for (const auto& p : poly->named_parameters()) keys[p.key()] = p.key();  // PEFT names them alike
    a.modules.push_back({path, layer, poly, keys, layer});
  }
  for (auto& m : a.modules) m.host->attach(name, m.module);
  return a;
}

Adapter load_poly_adapter(Backbone& model, const std::string& dir, std::shared_ptr<RoutingContext> context,
                          const std::string& name) {
  auto folder = io::read_peft_folder(dir);
  auto a = add_poly_adapter(model, folder.config, std::move(context), name);
  std::set<std::string> used;
  try {
    torch::NoGradGuard no_grad;
    for (auto& m : a.modules)
      for (auto& p : m.module->named_parameters()) {
        auto key = io::kPeftPrefix + m.site + "." + m.peft_keys.at(p.key());
        auto it = folder.tensors.find(key);
        if (it == folder.tensors.end())
          throw_error(kPolyLoraTag, dir + ": adapter_model.safetensors has no tensor '" + key + "'");
        if (it->second.sizes() != p.value().sizes())
          throw_error(kPolyLoraTag, dir + ": tensor '" + key + "' has shape " + c10::str(it->second.sizes()) +
                                        ", expected " + c10::str(p.value().sizes()));
        p.value().copy_(it->second);
        used.insert(key);
      }
    for (const auto& [key, t] : folder.tensors)
      if (!used.count(key))
        throw_error(kPolyLoraTag, dir + ": tensor '" + key + "' matches no module of this POLY config");
  } catch (...) {
    remove_adapter(a);
    throw;
  }
  return a;
}

std::vector<torch::Tensor> mhr_z(Adapter& poly) {
  std::vector<torch::Tensor> trainable;
  for (auto& m : poly.modules) {
    auto p = std::dynamic_pointer_cast<PolyLoraImpl>(m.module);
    if (!p) throw_error(kPolyLoraTag, "mhr_z: module at " + m.site + " is not a Poly module");
    p->poly_lora_A.set_requires_grad(false);
    p->poly_lora_B.set_requires_grad(false);
    p->poly_router->module_logits.set_requires_grad(true);
    trainable.push_back(p->poly_router->module_logits);
  }
  return trainable;
}

Adapter mhr_mu(Backbone& model, const Adapter& poly, const std::string& name) {
  if (poly.modules.empty()) throw_error(kPolyLoraTag, "mhr_mu: the Poly adapter has no modules");
  json targets = json::array();
  int64_t r = 0;
  double alpha = 1;
  for (const auto& m : poly.modules) {
    auto p = std::dynamic_pointer_cast<PolyLoraImpl>(m.module);
    if (!p) throw_error(kPolyLoraTag, "mhr_mu: module at " + m.site + " is not a Poly module");
    targets.push_back(m.site);
    r = p->options.r(), alpha = p->options.lora_alpha();
  }
  // (α / r) x A B as LoRA: lora_A = A^T, lora_B = B^T, the same scaling α / r.
  json config = {{"peft_type", "LORA"}, {"r", r}, {"lora_alpha", alpha}, {"target_modules", targets}, {"bias", "none"}};
  auto lora = lora_adapter(model, config, name);
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < poly.modules.size(); ++i) {
    auto p = std::dynamic_pointer_cast<PolyLoraImpl>(poly.modules[i].module);
    auto uniform = torch::full({1, p->options.n_splits(), p->options.n_skills()},
                               1.0 / static_cast<double>(p->options.n_skills()), p->poly_lora_A.options());
    auto [A, B] = p->combine_skills(uniform);  // mean over skills
    auto same_site = [&](const AttachedModule& m) { return m.site == poly.modules[i].site; };
    auto l =
        std::dynamic_pointer_cast<LoraImpl>(std::find_if(lora.modules.begin(), lora.modules.end(), same_site)->module);
    l->lora_A.copy_(A[0].t());
    l->lora_B.copy_(B[0].t());
  }
  return lora;
}

}  // namespace modula
