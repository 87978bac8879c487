// AdapterFusion (Pfeiffer et al. 2021): attention over adapter contributions per block site.
#include "modula/aggregation/fusion.h"

#include <ATen/CPUGeneratorImpl.h>

#include <cmath>
#include <set>

#include "modula/io/peft.h"
#include "modula/modules/targets.h"
#include "modula/util/error.h"

namespace modula {
namespace {

using json = nlohmann::json;

constexpr std::string_view kFusionTag = "fusion";

template <typename T>
T field(const json& c, const char* key, T fallback) {
  return io::config_field<T>(c, key, fallback, "[fusion]");
}

}  // namespace

void FusionOptions::validate() const {
  if (features() <= 0) throw_error(kFusionTag, "features (hidden size) must be positive");
  if (!(temperature() > 0) || !std::isfinite(temperature()))
    throw_error(kFusionTag, "temperature must be positive and finite (got " + std::to_string(temperature()) + ")");
  if (!std::isfinite(value_epsilon())) throw_error(kFusionTag, "value_epsilon must be finite");
  if (!(init_std() >= 0) || !std::isfinite(init_std())) throw_error(kFusionTag, "init_std must be >= 0");
  if (!(dropout() >= 0 && dropout() < 1))
    throw_error(kFusionTag, "dropout must be in [0, 1) (got " + std::to_string(dropout()) + ")");
}

json FusionOptions::to_json() const {
  return {{"temperature", temperature()},
          {"value_epsilon", value_epsilon()},
          {"init_std", init_std()},
          {"dropout", dropout()},
          {"seed", seed()}};
}

FusionOptions FusionOptions::from_json(const json& c, int64_t features) {
  if (!c.is_object()) throw_error(kFusionTag, "fusion config must be a JSON object, got " + c.dump());
  FusionOptions d(features);
  auto o = FusionOptions(features)
               .temperature(field<double>(c, "temperature", d.temperature()))
               .value_epsilon(field<double>(c, "value_epsilon", d.value_epsilon()))
               .init_std(field<double>(c, "init_std", d.init_std()))
               .dropout(field<double>(c, "dropout", d.dropout()))
               .seed(field<uint64_t>(c, "seed", d.seed()));
  o.validate();
  return o;
}

FusionImpl::FusionImpl(const FusionOptions& options_, std::vector<std::shared_ptr<SiteModule>> children)
    : CompositeImpl("fuse", std::move(children)), options(options_) {
  options.validate();
  const int64_t h = options.features();
  query = register_module("query", torch::nn::Linear(h, h));
  key = register_module("key", torch::nn::Linear(h, h));
  value = register_module("value", torch::nn::Linear(torch::nn::LinearOptions(h, h).bias(false)));
  reset();
}

void FusionImpl::reset() {
  torch::NoGradGuard no_grad;
  torch::Generator gen = at::detail::createCPUGenerator(options.seed());
  const int64_t h = options.features();
  auto normal = [&] { return at::normal(0.0, options.init_std(), {h, h}, gen); };
  // W_q, W_k: BERT's initialiser (AdapterHub's init_bert_weights); W_v near I.
  query->weight.copy_(normal());
  key->weight.copy_(normal());
  query->bias.zero_();
  key->bias.zero_();
  value->weight.fill_(options.value_epsilon()).fill_diagonal_(1.0);
}

// y + W_v Σ_c p_c d_c, p = softmax(q·k / T); W_v has no bias, so W_v Σ p d = Σ p W_v d.
torch::Tensor FusionImpl::transform_block(const torch::Tensor& x, const torch::Tensor& y) {
  auto d = contributions(x, y);  // [.., C, H]
  auto scores = torch::einsum("...h,...ch->...c", {query(y), key(d)}) / options.temperature();
  if (options.dropout() > 0) scores = torch::dropout(scores, options.dropout(), is_training());
  auto p = torch::softmax(scores, -1);
  last_attention_ = p.detach();
  return y + value(torch::einsum("...c,...ch->...h", {p, d}));
}

torch::Tensor FusionImpl::value_regularization() const {
  auto eye = torch::eye(options.features(), value->weight.options());
  return (eye - value->weight).pow(2).sum();
}

std::vector<std::pair<std::string, torch::Tensor>> FusionImpl::fusion_parameters() const {
  return {{"query.weight", query->weight},
          {"query.bias", query->bias},
          {"key.weight", key->weight},
          {"key.bias", key->bias},
          {"value.weight", value->weight}};
}

std::vector<torch::Tensor> AdapterFusion::parameters() const {
  std::vector<torch::Tensor> out;
  for (const auto& [path, f] : sites)
    for (const auto& p : f->fusion_parameters()) out.push_back(p.second);
  return out;
}

int64_t AdapterFusion::num_trainable() const {
  int64_t n = 0;
  for (const auto& p : parameters()) n += p.numel();
  return n;
}

torch::Tensor AdapterFusion::regularization_loss() const {
  torch::Tensor total;
  for (const auto& [path, f] : sites) {
    auto r = f->value_regularization();
    total = total.defined() ? total + r : r;
  }
  return total.defined() ? total : torch::zeros({});
}

AdapterFusion add_fusion(Backbone& model, const std::vector<const Adapter*>& adapters, const json& config,
                         const std::string& name) {
  if (adapters.empty()) throw_error(kFusionTag, "'" + name + "' needs at least one adapter");
  AdapterFusion fusion;
  fusion.name = name;
  std::set<std::string> seen;
  for (const auto* a : adapters) {
    if (!a) throw_error(kFusionTag, "'" + name + "': null adapter");
    if (!seen.insert(a->name).second)
      throw_error(kFusionTag, "'" + name + "': adapter '" + a->name + "' is given twice");
    bool has_block = false;
    for (const auto& m : a->modules) has_block = has_block || m.module->site_kind() == SiteKind::Block;
    if (!has_block)
      throw_error(kFusionTag,
                  "'" + name + "': adapter '" + a->name + "' (" + a->peft_type +
                      ") has no block-site modules; fusion combines bottleneck adapters (MODULA_BOTTLENECK)");
    fusion.adapters.push_back(a->name);
  }
  fusion.config = FusionOptions::from_json(config, 1).to_json();  // validates the keys
  int64_t index = 0;
  for (auto& [path, site] : block_sites(model)) {
    std::vector<std::shared_ptr<SiteModule>> members;
    for (const auto* a : adapters)
      for (const auto& m : a->modules)
        if (m.site == path && m.module->site_kind() == SiteKind::Block) members.push_back(m.module);
    if (members.empty()) continue;
    auto o = FusionOptions::from_json(config, site->features);
    o.seed(o.seed() + static_cast<uint64_t>(index++));  // distinct W_q, W_k per site
    auto f = std::make_shared<FusionImpl>(o, members);
    auto p = site->parameters().front();
    f->to(p.device(), p.scalar_type());
    attach_composition(*site, name, f);
    fusion.sites.emplace_back(path, f);
    fusion.hosts.emplace_back(path, site);
  }
  // The adapters are frozen: only the fusion trains (Pfeiffer et al. 2021, stage 2).
  for (const auto* a : adapters)
    for (auto& p : a->parameters()) p.set_requires_grad(false);
  return fusion;
}

void remove_fusion(AdapterFusion& fusion) {
  for (auto& [path, host] : fusion.hosts) detach_composition(*host, fusion.name);
  fusion.hosts.clear();
  fusion.sites.clear();
}

}  // namespace modula
