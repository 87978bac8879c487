#include "modula/composition/moefication.h"

#include <algorithm>
#include <functional>
#include <nlohmann/json.hpp>
#include <numeric>
#include <random>
#include <stdexcept>

#include "modula/modules/targets.h"
#include "modula/routing/top_k.h"
#include "modula/util/error.h"

namespace modula {

namespace {

constexpr std::string_view kMoeficationTag = "moefication";

std::shared_ptr<LinearImpl> linear_at(torch::nn::Module& root, const std::string& path) {
  auto modules = root.named_modules();
  auto* found = modules.find(path);
  auto linear = found ? std::dynamic_pointer_cast<LinearImpl>(*found) : nullptr;
  if (!linear) throw_error(kMoeficationTag, "no linear layer at '" + path + "'");
  if (linear->has_modules())
    throw_error(kMoeficationTag, "'" + path + "' carries attached modules; merge or detach them before MoE-fication");
  return linear;
}

// A weight of the site's projections (device and dtype to give the MoE FFN).
torch::Tensor dense_ffn_weight(torch::nn::Module& site) {
  auto params = site.parameters();
  return params.empty() ? torch::zeros({}) : params.front();
}

torch::Tensor detached(const torch::Tensor& t) { return t.defined() ? t.detach().clone() : t; }

}  // namespace

DenseFfn dense_ffn(Backbone& model, const std::string& path) {
  auto modules = model.named_modules();
  auto* found = modules.find(path);
  auto site = found ? std::dynamic_pointer_cast<BlockSite>(*found) : nullptr;
  if (!site || site->role != BlockRole::FeedForward)
    throw_error(kMoeficationTag, "'" + path + "' is not a feed-forward block site");
  auto children = site->named_children();
  DenseFfn ffn;
  ffn.activation = model.config().hidden_act;
  std::shared_ptr<LinearImpl> up, gate, down;
  if (children.contains("gate_proj")) {  // Llama family: down(act(gate x) ⊙ up x)
    gate = linear_at(model, path + ".gate_proj");
    up = linear_at(model, path + ".up_proj");
    down = linear_at(model, path + ".down_proj");
  } else if (children.contains("c_fc")) {  // GPT-2: c_proj(act(c_fc x))
    up = linear_at(model, path + ".c_fc");
    down = linear_at(model, path + ".c_proj");
  } else if (children.contains("dense")) {  // encoders: "…layer.N.output" after "…layer.N.intermediate"
    auto layer = path.substr(0, path.rfind('.'));
    up = linear_at(model, layer + ".intermediate.dense");
    down = linear_at(model, path + ".dense");
  } else {
    throw_error(
        kMoeficationTag,
        "'" + path + "' has no known feed-forward projections (gate_proj/up_proj/down_proj, c_fc/c_proj, dense)");
  }
  ffn.gated = gate != nullptr;
  ffn.w_up = detached(up->weight_out_in());
  ffn.b_up = detached(up->bias);
  if (gate) {
    ffn.w_gate = detached(gate->weight_out_in());
    ffn.b_gate = detached(gate->bias);
  }
  ffn.w_down = detached(down->weight_out_in());
  ffn.b_down = detached(down->bias);
  return ffn;
}

torch::Tensor balanced_kmeans(const torch::Tensor& points, int64_t clusters, int64_t iterations, uint64_t seed) {
  if (points.dim() != 2) throw_error(kMoeficationTag, "k-means points must be [n, d], got " + c10::str(points.sizes()));
  const int64_t n = points.size(0);
  if (clusters <= 0 || n % clusters != 0)
    throw_error(kMoeficationTag,
                "cannot split " + std::to_string(n) + " neurons into " + std::to_string(clusters) + " equal groups");
  if (iterations <= 0)
    throw_error(kMoeficationTag, "kmeans_iterations must be positive, got " + std::to_string(iterations));
  const int64_t size = n / clusters;
  auto x = points.detach().to(torch::kCPU, torch::kFloat32).contiguous();
  // Initial centroids: `clusters` distinct rows, drawn reproducibly.
  std::vector<int64_t> rows(n);
  std::iota(rows.begin(), rows.end(), 0);
  std::mt19937_64 rng(seed);
  std::shuffle(rows.begin(), rows.end(), rng);
  auto centroids = x.index_select(0, torch::tensor(std::vector<int64_t>(rows.begin(), rows.begin() + clusters)));

  auto assignment = torch::full({n}, -1, torch::kInt64);
  for (int64_t it = 0; it < iterations; ++it) {
    // Greedy balanced assignment: closest (row, centroid) pairs first, each group capped at n / clusters.
    auto distance = torch::cdist(x, centroids).reshape({-1});
    auto order = std::get<1>(distance.sort());
    auto next = torch::full({n}, -1, torch::kInt64);
    auto* group = next.data_ptr<int64_t>();
    std::vector<int64_t> filled(clusters, 0);
    const auto* pair = order.data_ptr<int64_t>();
    for (int64_t i = 0, placed = 0; i < order.numel() && placed < n; ++i) {
      const int64_t row = pair[i] / clusters, c = pair[i] % clusters;
      if (group[row] >= 0 || filled[c] == size) continue;
      group[row] = c;
      ++filled[c];
      ++placed;
    }
    const bool converged = next.equal(assignment);
    assignment = next;
    if (converged) break;
    centroids = torch::zeros_like(centroids).index_add(0, assignment, x) / static_cast<double>(size);
  }
  return assignment.to(points.device());
}

void MoefyOptions::validate() const {
  if (num_experts() <= 0)
    throw_error(kMoeficationTag, "num_experts must be positive, got " + std::to_string(num_experts()));
  if (k() < 1 || k() > num_experts())
    throw_error(kMoeficationTag,
                "k must be in [1, num_experts = " + std::to_string(num_experts()) + "], got " + std::to_string(k()));
  if (kmeans_iterations() <= 0)
    throw_error(kMoeficationTag, "kmeans_iterations must be positive, got " + std::to_string(kmeans_iterations()));
  if (router_distillation_coef() < 0) throw_error(kMoeficationTag, "router_distillation_coef must be >= 0");
}

MoeFfn moefy_ffn(const DenseFfn& ffn, const MoefyOptions& options) {
  options.validate();
  const int64_t E = options.num_experts(), H = ffn.features(), I = ffn.intermediate();
  if (I % E != 0)
    throw_error(kMoeficationTag,
                "intermediate size " + std::to_string(I) + " is not divisible by num_experts " + std::to_string(E));
  const int64_t size = I / E;
  // Cluster the rows that decide each neuron's activation (SwiGLU: both of its input rows).
  auto rows = ffn.gated ? torch::cat({ffn.w_gate, ffn.w_up}, 1) : ffn.w_up;
  auto group = balanced_kmeans(rows, E, options.kmeans_iterations(), options.seed());
  auto perm = std::get<1>(torch::sort(group, /*stable=*/true, 0, false));  // neurons of expert 0, then 1, …

  auto router = TopKRouter(TopKRouterOptions(H, E)
                               .k(options.k())
                               .load_balance_coef(options.load_balance_coef())
                               .z_loss_coef(options.z_loss_coef()),
                           options.context());
  auto moe = MoeFfn(MoeFfnOptions(H, size, E)
                        .activation(ffn.activation)
                        .gated(ffn.gated)
                        .bias(ffn.b_up.defined())
                        .shared_bias(ffn.b_down.defined())
                        .weighted(false)
                        .router_distillation_coef(options.router_distillation_coef()),
                    router.ptr());
  torch::NoGradGuard no_grad;
  auto split_rows = [&](const torch::Tensor& w) { return w.index_select(0, perm).view({E, size, -1}); };
  moe->w_up.copy_(split_rows(ffn.w_up));
  if (ffn.gated) moe->w_gate.copy_(split_rows(ffn.w_gate));
  moe->w_down.copy_(ffn.w_down.index_select(1, perm).view({H, E, size}).permute({1, 0, 2}));
  if (ffn.b_up.defined()) {
    moe->b_up.copy_(ffn.b_up.index_select(0, perm).view({E, size}));
    if (ffn.gated)
      moe->b_gate.copy_(ffn.b_gate.defined() ? ffn.b_gate.index_select(0, perm).view({E, size})
                                             : torch::zeros({E, size}));
    moe->b_down.zero_();  // the dense output bias is shared, not split
  }
  if (ffn.b_down.defined()) moe->output_bias.copy_(ffn.b_down);
  // Gate starts at each group's mean activating row: logit_e = x · mean_{j ∈ S_e} w_j.
  router->gate->weight.copy_(split_rows(ffn.gated ? ffn.w_gate : ffn.w_up).mean(1));
  return moe;
}

std::vector<std::pair<std::string, MoeFfn>> replace_ffns(Backbone& model, const std::vector<int64_t>& layers,
                                                         const std::string& name,
                                                         const std::function<MoeFfn(const DenseFfn&)>& make) {
  nlohmann::json select = {{"target_modules", ".*"}};
  if (!layers.empty()) select["layers_to_transform"] = layers;
  std::vector<std::pair<std::string, MoeFfn>> result;
  for (auto& [path, site] : select_block_sites(model, select)) {
    if (site->role != BlockRole::FeedForward) continue;
    if (site->has_modules())  // a replacing module must come first: it ignores what earlier ones computed
      throw_error(kMoeficationTag,
                  "'" + path + "' already carries block modules; replace the FFN before attaching others");
    auto moe = make(dense_ffn(model, path));
    auto like = dense_ffn_weight(*site);
    moe->to(like.device(), like.scalar_type());
    site->attach(name, moe.ptr());
    result.emplace_back(path, moe);
  }
  if (result.empty())
    throw_error(kMoeficationTag, "no feed-forward block matched layers " + nlohmann::json(layers).dump());
  return result;
}

std::vector<std::pair<std::string, MoeFfn>> moefy(Backbone& model, const MoefyOptions& options) {
  options.validate();
  return replace_ffns(model, options.layers(), options.name(),
                      [&](const DenseFfn& ffn) { return moefy_ffn(ffn, options); });
}

}  // namespace modula
