// The LoRA hypernetwork (HyperFormer, Mahabadi et al. 2021): site selection, seeded
// initialisation, task selection and per-example generation. Files: hypernetwork_io.cpp.
#include "modula/modules/hypernetwork.h"

#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <cmath>
#include <map>

#include "modula/modules/targets.h"
#include "modula/util/error.h"

namespace modula {
namespace {

constexpr std::string_view kHypernetworkTag = "hyper_lora";

std::string shape_name(int64_t in, int64_t out) { return "in" + std::to_string(in) + "_out" + std::to_string(out); }

using Selected = std::vector<std::pair<std::string, std::shared_ptr<LinearImpl>>>;

// The selected sites, grouped by (in, out) shape in order of first appearance.
std::vector<HyperSite> group_by_shape(const Selected& selected, std::vector<std::pair<int64_t, int64_t>>& shapes) {
  std::vector<HyperSite> sites;
  for (const auto& [path, layer] : selected) {
    HyperSite s{path, layer->options.in_features(), layer->options.out_features(), layer->options.conv1d_layout()};
    auto shape = std::make_pair(s.in_features, s.out_features);
    auto it = std::find(shapes.begin(), shapes.end(), shape);
    s.group = static_cast<size_t>(it - shapes.begin());
    if (it == shapes.end()) shapes.push_back(shape);
    sites.push_back(s);
  }
  return sites;
}

torch::Tensor linear(const torch::nn::Linear& l, const torch::Tensor& x) {
  return torch::nn::functional::linear(x, l->weight, l->bias);
}

}  // namespace

void HyperLoraOptions::validate() const {
  auto positive = [](const char* name, int64_t v) {
    if (v <= 0) throw_error(kHypernetworkTag, std::string(name) + " must be positive (got " + std::to_string(v) + ")");
  };
  if (num_tasks() < 0)
    throw_error(kHypernetworkTag, "num_tasks must be >= 0 (got " + std::to_string(num_tasks()) + ")");
  positive("task_embedding_dim", task_embedding_dim());
  positive("layer_embedding_dim", layer_embedding_dim());
  positive("hidden", hidden());
  positive("r", r());
  if (!std::isfinite(alpha())) throw_error(kHypernetworkTag, "alpha must be finite");
  if (routing_key().empty())
    throw_error(kHypernetworkTag, "routing_key must name a RoutingContext entry (default \"task\")");
  if (!target_modules().is_string() && !target_modules().is_array())
    throw_error(kHypernetworkTag, "target_modules must be a string or a list (got " + target_modules().dump() + ")");
}

HyperLoraImpl::HyperLoraImpl(Backbone& model, const HyperLoraOptions& options_) : options(options_) {
  options.validate();
  std::vector<std::pair<int64_t, int64_t>> shapes;
  const auto selected = select_sites(model, {{"target_modules", options.target_modules()}});
  sites_ = group_by_shape(selected, shapes);
  cache_.resize(sites_.size());
  const int64_t dt = options.task_embedding_dim(), dl = options.layer_embedding_dim(), h = options.hidden(),
                r = options.r();
  if (options.num_tasks() > 0)
    task_embeddings = register_parameter("task_embeddings", torch::empty({options.num_tasks(), dt}));
  site_embeddings = register_parameter("site_embeddings", torch::empty({static_cast<int64_t>(sites_.size()), dl}));
  hidden = register_module("hidden", torch::nn::Linear(dt + dl, h));
  auto groups = register_module("heads", std::make_shared<torch::nn::Module>());
  for (auto [in, out] : shapes) {
    auto group = groups->register_module(shape_name(in, out), std::make_shared<torch::nn::Module>());
    heads.emplace_back(group->register_module("lora_A", torch::nn::Linear(h, r * in)),
                       group->register_module("lora_B", torch::nn::Linear(h, out * r)));
  }
  reset();
  const auto& weight = selected.front().second->weight;  // the generator lives with the sites
  to(weight.device(), weight.scalar_type());
}

void HyperLoraImpl::reset() {
  torch::NoGradGuard no_grad;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(options.seed());
  auto device = site_embeddings.device();
  auto fill = [&](torch::Tensor& t, auto&& init) {  // init on CPU from the seed, then copy
    auto cpu = torch::empty(t.sizes(), torch::kFloat32);
    init(cpu);
    t.copy_(cpu.to(device));
  };
  if (task_embeddings.defined()) fill(task_embeddings, [&](torch::Tensor& t) { t.normal_(0, 1, gen); });
  fill(site_embeddings, [&](torch::Tensor& t) { t.normal_(0, 1, gen); });
  // torch.nn.Linear's default, U(±1/sqrt(fan_in)) for weight and bias.
  const double fan_in = static_cast<double>(hidden->weight.size(1));
  fill(hidden->weight, [&](torch::Tensor& t) { t.uniform_(-1, 1, gen).div_(std::sqrt(fan_in)); });
  fill(hidden->bias, [&](torch::Tensor& t) { t.uniform_(-1, 1, gen).div_(std::sqrt(fan_in)); });
  for (size_t g = 0; g < heads.size(); ++g) {
    auto& [a, b] = heads[g];
    // Generated A ~ LoRA's kaiming-uniform scale 1/sqrt(in) (Hu et al. 2022); B = 0: identity at init.
    const double in = static_cast<double>(a->weight.size(0) / options.r()), h = static_cast<double>(options.hidden());
    fill(a->weight, [&](torch::Tensor& t) { t.uniform_(-1, 1, gen).div_(std::sqrt(h * in)); });
    a->bias.zero_();
    b->weight.zero_();
    b->bias.zero_();
  }
}

void HyperLoraImpl::attach(Backbone& model, const std::string& name) {
  std::map<std::string, std::shared_ptr<LinearImpl>> layers;
  for (auto& [path, layer] : linear_sites(model)) layers[path] = layer;
  for (const auto& s : sites_) {
    auto it = layers.find(s.path);
    if (it == layers.end())
      throw_error(kHypernetworkTag, "attach '" + name + "': the backbone has no linear site '" + s.path + "'");
    const auto& lo = it->second->options;
    if (lo.in_features() != s.in_features || lo.out_features() != s.out_features)
      throw_error(kHypernetworkTag, "attach '" + name + "': site '" + s.path + "' is [" +
                                        std::to_string(lo.in_features()) + " -> " + std::to_string(lo.out_features()) +
                                        "], the hypernetwork was built for [" + std::to_string(s.in_features) + " -> " +
                                        std::to_string(s.out_features) + "]");
    if (it->second->module(name))
      throw_error(kHypernetworkTag, "attach: a module named '" + name + "' is already attached at " + s.path);
  }
  auto self = std::static_pointer_cast<HyperLoraImpl>(shared_from_this());
  for (size_t i = 0; i < sites_.size(); ++i) {
    auto layer = layers[sites_[i].path];
    layer->attach(name, std::make_shared<GeneratedLoraImpl>(self, i));
    attached_.emplace_back(layer, name);
  }
}

void HyperLoraImpl::detach() {
  for (auto& [site, name] : attached_)
    if (auto layer = site.lock()) layer->detach(name);
  attached_.clear();
}

void HyperLoraImpl::set_task_ids(const torch::Tensor& ids) {
  if (!ids.defined() || ids.dim() != 1 || ids.numel() == 0)
    throw_error(kHypernetworkTag, "task_ids must be a non-empty 1-D tensor [batch] (got " +
                                      (ids.defined() ? c10::str(ids.sizes()) : "undefined") + ")");
  if (at::isFloatingType(ids.scalar_type()) || ids.scalar_type() == torch::kBool)
    throw_error(kHypernetworkTag, "task_ids must be integers");
  auto cpu = ids.to(torch::kCPU, torch::kInt64);
  for (int64_t bound : {cpu.min().item<int64_t>(), cpu.max().item<int64_t>()})
    if (bound < 0 || bound >= options.num_tasks())
      throw_error(kHypernetworkTag,
                  "task id " + std::to_string(bound) + " is out of range: num_tasks is " +
                      std::to_string(options.num_tasks()) +
                      (options.num_tasks() == 0 ? " (use set_task_embedding)"
                                                : " (ids 0.." + std::to_string(options.num_tasks() - 1) + ")"));
  task_ids_ = cpu.to(site_embeddings.device());
  external_embedding_ = torch::Tensor();
  ++task_version_;
}

void HyperLoraImpl::set_task_embedding(const torch::Tensor& e) {
  const int64_t dt = options.task_embedding_dim();
  if (!e.defined() || e.dim() < 1 || e.dim() > 2 || e.size(-1) != dt || e.numel() == 0)
    throw_error(kHypernetworkTag, "task embedding must be [" + std::to_string(dt) + "] or [batch, " +
                                      std::to_string(dt) + "] (got " +
                                      (e.defined() ? c10::str(e.sizes()) : "undefined") + ")");
  external_embedding_ = e.dim() == 1 ? e.unsqueeze(0) : e;
  task_ids_ = torch::Tensor();
  ++task_version_;
}

torch::Tensor HyperLoraImpl::task_embedding() const {
  if (task_ids_.defined()) return task_embeddings.index_select(0, task_ids_.to(task_embeddings.device()));
  if (!external_embedding_.defined())
    throw std::runtime_error("[hyper_lora] no task set: call set_task_ids or set_task_embedding before forward");
  return external_embedding_.to(site_embeddings.device(), site_embeddings.scalar_type());
}

std::pair<torch::Tensor, torch::Tensor> HyperLoraImpl::generate(size_t site, const torch::Tensor& e) const {
  const auto& s = sites_.at(site);
  const int64_t n = e.size(0), r = options.r();
  auto site_e = site_embeddings[static_cast<int64_t>(site)].unsqueeze(0).expand({n, options.layer_embedding_dim()});
  auto h = torch::relu(linear(hidden, torch::cat({e, site_e}, 1)));  // [n, hidden]
  const auto& [head_a, head_b] = heads[s.group];
  return {linear(head_a, h).view({n, r, s.in_features}), linear(head_b, h).view({n, s.out_features, r})};
}

std::vector<GeneratedLoraWeights> HyperLoraImpl::modules_for_embedding(const torch::Tensor& task_embedding) const {
  const int64_t dt = options.task_embedding_dim();
  if (!task_embedding.defined() || task_embedding.dim() < 1 || task_embedding.dim() > 2 ||
      task_embedding.size(-1) != dt)
    throw_error(kHypernetworkTag,
                "task embedding must be [" + std::to_string(dt) + "] or [N, " + std::to_string(dt) + "]");
  auto e = task_embedding.to(site_embeddings.device(), site_embeddings.scalar_type());
  const bool single = e.dim() == 1;
  std::vector<GeneratedLoraWeights> out;
  for (size_t i = 0; i < sites_.size(); ++i) {
    auto [a, b] = generate(i, single ? e.unsqueeze(0) : e);
    out.push_back({sites_[i].path, single ? a.squeeze(0) : a, single ? b.squeeze(0) : b});
  }
  return out;
}

int64_t HyperLoraImpl::param_version() const {
  int64_t v = 0;
  for (const auto& p : parameters()) v += static_cast<int64_t>(p._version());
  return v;
}

void HyperLoraImpl::follow_source() {
  if (!task_source) return;  // the tasks come from the routing metadata: follow them when they change
  auto ids = task_source();
  if (ids.defined() && !ids.is_same(source_ids_)) set_task_ids(ids), source_ids_ = ids;
}

std::pair<torch::Tensor, torch::Tensor> HyperLoraImpl::task_rows(int64_t batch) {
  auto table = task_ids_.defined() ? task_embeddings : task_embedding();  // external: [E, d_t]
  const int64_t set = task_ids_.defined() ? task_ids_.size(0) : table.size(0);
  if (set != 1 && set != batch)
    throw_error(kHypernetworkTag, std::to_string(set) + " tasks set for a batch of " + std::to_string(batch) +
                                      " (one task id per example, or one for all)");
  auto opts = torch::TensorOptions(torch::kInt64).device(site_embeddings.device());
  torch::Tensor ids;
  if (task_ids_.defined())
    ids = set == batch ? task_ids_ : task_ids_.expand({batch});
  else
    ids = set == batch ? torch::arange(batch, opts) : torch::zeros({batch}, opts);
  return {table, ids};
}

std::pair<torch::Tensor, torch::Tensor> HyperLoraImpl::rows_weights(size_t site, const torch::Tensor& table,
                                                                    const torch::Tensor& ids) {
  auto rows = [&] { return generate(site, table.index_select(0, ids)); };
  // With autograd on, a cached graph could be freed by backward: generate afresh each forward.
  if (torch::GradMode::is_enabled()) return rows();
  auto& c = cache_.at(site);
  const int64_t version = param_version();
  const bool fresh = c.lora_A.defined() && c.task_version == task_version_ && c.param_version == version &&
                     c.ids.sizes() == ids.sizes() && torch::equal(c.ids, ids) &&
                     c.lora_A.device() == site_embeddings.device() &&
                     c.lora_A.scalar_type() == site_embeddings.scalar_type();
  if (!fresh) {
    auto [a, b] = rows();
    c = {a, b, ids.clone(), task_version_, version};
  }
  return {c.lora_A, c.lora_B};
}

// Algorithm 1 at the site: each example is routed (fixed, by its task) to its embedding row.
torch::Tensor HyperLoraImpl::apply(size_t site, const torch::Tensor& x, const torch::Tensor& y, double scale) {
  follow_source();
  const int64_t batch = x.dim() < 2 ? 1 : x.size(0);
  auto [table, ids] = task_rows(batch);
  rows_->set("row", ids);
  if (!router_ || router_->num_modules() != table.size(0))
    router_ = FixedRouter(FixedRouterOptions(table.size(0)).key("row"), rows_);
  auto x3 = x.reshape({batch, -1, sites_[site].in_features});  // [N, T, in]
  HyperLoraBank bank(*this, site, table, scale * options.scaling());
  return y + algorithm1(*router_, bank, Aggregation::WeightedSum, {x3, y}).view(y.sizes());
}

namespace {
// s · (x Aᵀ) Bᵀ per example: x [N, T, in], A [N, r, in], B [N, out, r] -> [N, T, out].
torch::Tensor lora_rows(const torch::Tensor& x, torch::Tensor a, torch::Tensor b, double s) {
  if (a.scalar_type() != x.scalar_type()) a = a.to(x.scalar_type()), b = b.to(x.scalar_type());
  return s * torch::matmul(torch::matmul(x, a.transpose(1, 2)), b.transpose(1, 2));
}
}  // namespace

torch::Tensor HyperLoraBank::selected(const SiteInput& in, const torch::Tensor& idx, const torch::Tensor& w) {
  if (idx.dim() != 2)
    throw_error(kHypernetworkTag, "a hypernetwork bank routes per example ([N, k] indices), not per token");
  auto x = as_rows(in.x, "hypernetwork bank");
  torch::Tensor out;
  for (int64_t k = 0; k < idx.size(1); ++k) {  // k is the routing's top-k (1 for fixed routing)
    auto col = idx.select(1, k);
    auto [a, b] = hyper_.rows_weights(site_, table_, col.clamp_min(0));
    auto wk = (w.select(1, k) * (col >= 0).to(w.scalar_type())).to(x.scalar_type()).view({-1, 1, 1});
    auto d = wk * lora_rows(x, a, b, scale_);
    out = out.defined() ? out + d : d;
  }
  return out;
}

torch::Tensor HyperLoraBank::mixed(const SiteInput& in, const torch::Tensor& w) {
  auto x = as_rows(in.x, "hypernetwork bank");
  auto [a, b] = hyper_.generate(site_, table_);  // every row's module: [M, r, in], [M, out, r]
  a = a.to(x.scalar_type()), b = b.to(x.scalar_type());
  auto d = torch::einsum("mor,ntmr->ntmo", {b, torch::einsum("ntd,mrd->ntmr", {x, a})});  // f_m(x), [N, T, M, out]
  auto wt = (w.dim() == 2 ? w.unsqueeze(1) : w).to(x.scalar_type());                      // [N, 1|T, M]
  return scale_ * (wt.unsqueeze(-1) * d).sum(2);
}

torch::Tensor HyperLoraBank::averaged(const SiteInput& in, const torch::Tensor& w) {
  auto x = as_rows(in.x, "hypernetwork bank");
  auto [a, b] = hyper_.generate(site_, table_);
  auto wg = w.unsqueeze(1);  // [N, 1, M]: one group
  auto abar = average_parameters(wg, a.unsqueeze(0)).squeeze(1),
       bbar = average_parameters(wg, b.unsqueeze(0)).squeeze(1);
  return lora_rows(x, abar, bbar, scale_);
}

nlohmann::json HyperLoraImpl::config() const {
  nlohmann::json c = {{"peft_type", kHyperLoraType},
                      {"num_tasks", options.num_tasks()},
                      {"task_embedding_dim", options.task_embedding_dim()},
                      {"layer_embedding_dim", options.layer_embedding_dim()},
                      {"hidden", options.hidden()},
                      {"r", options.r()},
                      {"alpha", options.alpha()},
                      {"target_modules", options.target_modules()},
                      {"seed", options.seed()},
                      {"sites", nlohmann::json::array()}};
  for (const auto& s : sites_) c["sites"].push_back(s.path);
  if (options.routing_key() != "task") c["routing_key"] = options.routing_key();
  return c;
}

torch::Tensor GeneratedLoraImpl::transform_output(const torch::Tensor& x, const torch::Tensor& y, const LinearImpl&) {
  return hyper->apply(site, x, y, scale);
}

void GeneratedLoraImpl::merge(LinearImpl&) {
  throw std::invalid_argument(
      "[hyper_lora] generated modules differ per example and cannot be merged; "
      "export_lora writes a static LoRA for one task");
}

void GeneratedLoraImpl::unmerge(LinearImpl&) { throw_error("hyper_lora", "generated modules are never merged"); }

}  // namespace modula
