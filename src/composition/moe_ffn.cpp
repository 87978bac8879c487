#include "modula/composition/moe_ffn.h"

#include <cmath>
#include <stdexcept>
#include <string>

#include "modula/routing/top_k.h"
#include "modula/util/error.h"

namespace modula {

namespace {
constexpr std::string_view kMoeFfnTag = "moe ffn";
}  // namespace

void MoeFfnOptions::validate() const {
  if (features() <= 0) throw_error(kMoeFfnTag, "features must be positive, got " + std::to_string(features()));
  if (expert_size() <= 0) throw_error(kMoeFfnTag, "expert_size must be positive, got " + std::to_string(expert_size()));
  if (num_experts() <= 0) throw_error(kMoeFfnTag, "num_experts must be positive, got " + std::to_string(num_experts()));
  if (!dropless() && !(capacity_factor() > 0))
    throw_error(kMoeFfnTag, "capacity_factor must be > 0 (or set dropless), got " + std::to_string(capacity_factor()));
  if (router_distillation_coef() < 0)
    throw_error(kMoeFfnTag, "router_distillation_coef must be >= 0, got " + std::to_string(router_distillation_coef()));
  try {
    check_activation(activation());
  } catch (const std::exception& e) {
    throw_error(kMoeFfnTag, std::string("activation: ") + e.what());
  }
}

int64_t MoeFfnOptions::capacity(int64_t tokens, int64_t k) const {
  // Switch Transformer (Fedus et al. 2022, eq. 3): capacity factor · tokens per expert.
  return static_cast<int64_t>(std::ceil(capacity_factor() * static_cast<double>(tokens * k) / num_experts()));
}

MoeFfnImpl::MoeFfnImpl(const MoeFfnOptions& options_, std::shared_ptr<RouterImpl> router_)
    : options(options_), router(std::move(router_)) {
  options.validate();
  if (!router) throw_error(kMoeFfnTag, "needs a router");
  if (router->num_modules() != options.num_experts())
    throw_error(kMoeFfnTag, "the router routes over " + std::to_string(router->num_modules()) +
                                " modules, the layer has " + std::to_string(options.num_experts()) + " experts");
  if (options.router_distillation_coef() > 0 && !std::dynamic_pointer_cast<TopKRouterImpl>(router))
    throw_error(kMoeFfnTag, "router_distillation_coef needs a TopKRouter (it trains the gate logits)");
  register_module("router", router);
  reset();
}

void MoeFfnImpl::reset() {
  const int64_t E = options.num_experts(), I = options.expert_size(), H = options.features();
  auto uniform = [](std::vector<int64_t> shape, int64_t fan_in) {
    double bound = 1.0 / std::sqrt(static_cast<double>(fan_in));  // kaiming-uniform(a = sqrt 5)
    return torch::empty(shape).uniform_(-bound, bound);
  };
  torch::NoGradGuard no_grad;
  w_up = register_parameter("w_up", uniform({E, I, H}, H));
  if (options.gated()) w_gate = register_parameter("w_gate", uniform({E, I, H}, H));
  w_down = register_parameter("w_down", uniform({E, H, I}, I));
  if (options.bias()) {
    b_up = register_parameter("b_up", torch::zeros({E, I}));
    if (options.gated()) b_gate = register_parameter("b_gate", torch::zeros({E, I}));
    b_down = register_parameter("b_down", torch::zeros({E, H}));
  }
  if (options.shared_bias()) output_bias = register_parameter("output_bias", torch::zeros({H}));
}

namespace {
// One expert on its tokens x [n, H]: W_down act(W_up x) (gated: W_down (act(W_gate x) ⊙ W_up x)).
torch::Tensor moe_ffn_expert(const MoeFfnOptions& o, const torch::Tensor& x, const torch::Tensor& up,
                             const torch::Tensor& gate, const torch::Tensor& down, const torch::Tensor& b_up,
                             const torch::Tensor& b_gate, const torch::Tensor& b_down) {
  namespace F = torch::nn::functional;
  auto h = F::linear(x, up, b_up);
  h = o.gated() ? activation(o.activation(), F::linear(x, gate, b_gate)) * h : activation(o.activation(), h);
  return F::linear(h, down, b_down);
}

// The E experts' pieces of a stacked parameter [E, ...] (none if undefined). One unbind per
// forward: indexing t[e] per expert would make backward write a zero gradient of the whole
// stack for every expert (E² memory traffic); unbind's backward stacks the E pieces once.
std::vector<torch::Tensor> moe_ffn_pieces(const torch::Tensor& t, int64_t E) {
  return t.defined() ? t.unbind(0) : std::vector<torch::Tensor>(static_cast<size_t>(E));
}
}  // namespace

torch::Tensor MoeFfnImpl::expert(int64_t e, const torch::Tensor& x) const {
  auto pick = [e](const torch::Tensor& t) { return t.defined() ? t[e] : torch::Tensor(); };
  return moe_ffn_expert(options, x, w_up[e], pick(w_gate), w_down[e], pick(b_up), pick(b_gate), pick(b_down));
}

torch::Tensor MoeFfnImpl::dispatch(const torch::Tensor& x, const torch::Tensor& experts, const torch::Tensor& gates) {
  const int64_t N = x.size(0), k = experts.size(1), E = options.num_experts();
  // Assignments in choice-major order: every token's first choice precedes any second
  // choice (GShard priority). Expert id -1 (no module, fixed routing) is skipped.
  auto slot = torch::arange(k * N, experts.options());
  auto expert_of = experts.t().reshape({-1});
  auto valid = expert_of >= 0;
  slot = slot.masked_select(valid);
  expert_of = expert_of.masked_select(valid);
  if ((expert_of >= E).any().item<bool>())
    throw_error(kMoeFfnTag,
                "routing names expert " + std::to_string(expert_of.max().item<int64_t>()) + " of " + std::to_string(E));
  // Sort by expert (stable: priority order inside each expert's segment).
  auto order = std::get<1>(torch::sort(expert_of, /*stable=*/true, /*dim=*/0, /*descending=*/false));
  auto sorted_expert = expert_of.index_select(0, order);
  auto counts = torch::bincount(expert_of, {}, E);
  auto starts = counts.cumsum(0) - counts;
  auto position = torch::arange(order.size(0), experts.options()) - starts.index_select(0, sorted_expert);
  if (!options.dropless()) {  // Switch capacity: the assignments past `capacity` are dropped
    const int64_t capacity = options.capacity(N, k);
    order = order.masked_select(position < capacity);
    counts = counts.clamp_max(capacity);
  }
  auto run = slot.index_select(0, order);  // the assignments computed, grouped by expert
  last_kept = torch::zeros({k * N}, experts.options().dtype(torch::kBool)).index_fill(0, run, true).view({k, N}).t();

  auto tokens = run.remainder(N);
  auto sizes_cpu = counts.to(torch::kCPU).contiguous();  // one sync: the segment sizes
  std::vector<int64_t> sizes(sizes_cpu.data_ptr<int64_t>(), sizes_cpu.data_ptr<int64_t>() + E);
  auto segments = x.index_select(0, tokens).split_with_sizes(sizes);
  auto up = moe_ffn_pieces(w_up, E), gating = moe_ffn_pieces(w_gate, E), down = moe_ffn_pieces(w_down, E);
  auto bu = moe_ffn_pieces(b_up, E), bg = moe_ffn_pieces(b_gate, E), bd = moe_ffn_pieces(b_down, E);
  std::vector<torch::Tensor> outputs;
  for (int64_t e = 0; e < E; ++e)
    if (sizes[e] > 0)
      outputs.push_back(moe_ffn_expert(options, segments[e], up[e], gating[e], down[e], bu[e], bg[e], bd[e]));
  auto out = torch::zeros_like(x);
  if (outputs.empty()) return out;
  auto gate = gates.t().reshape({-1}).index_select(0, run).unsqueeze(1).to(x.scalar_type());
  return out.index_add(0, tokens, torch::cat(outputs) * gate);
}

torch::Tensor MoeFfnImpl::selected(const SiteInput& in, const torch::Tensor& idx, const torch::Tensor& w) {
  const auto& x = in.x;
  const int64_t H = options.features();
  auto experts = idx, gates = w;
  if (idx.dim() == 2 && x.dim() == 3) {  // per-example routing: every token of a row shares it
    experts = idx.unsqueeze(1).expand({x.size(0), x.size(1), idx.size(-1)});
    gates = w.unsqueeze(1).expand(experts.sizes());
  }
  experts = experts.reshape({-1, experts.size(-1)});
  gates = gates.reshape({-1, gates.size(-1)});
  return dispatch(x.reshape({-1, H}), experts, gates).view(x.sizes());
}

torch::Tensor MoeFfnImpl::mixed(const SiteInput& in, const torch::Tensor& w) {
  const int64_t E = options.num_experts();
  auto all = torch::arange(E, w.options().dtype(torch::kLong)).expand(w.sizes());  // soft routing: every expert
  return selected(in, all, w);
}

torch::Tensor MoeFfnImpl::forward(const torch::Tensor& x) {
  const int64_t H = options.features();
  if (!x.defined() || x.dim() < 1 || x.size(-1) != H)
    throw_error(kMoeFfnTag, "input must be [.., " + std::to_string(H) + "], got " +
                                (x.defined() ? c10::str(x.sizes()) : "undefined"));
  auto out = algorithm1(*router, *this, options.weighted() ? Aggregation::WeightedSum : Aggregation::Sum,
                        {x, {}, nullptr}, &last_routing);
  if (output_bias.defined()) out = out + output_bias;
  if (options.router_distillation_coef() > 0 && is_training()) {
    auto loss = options.router_distillation_coef() * router_distillation_loss(x);
    router->aux_loss = router->aux_loss.defined() ? router->aux_loss + loss : loss;
  }
  return out;
}

torch::Tensor MoeFfnImpl::transform_block(const torch::Tensor& x, const torch::Tensor&) { return forward(x); }

torch::Tensor MoeFfnImpl::activation_norms(const torch::Tensor& x) const {
  const int64_t H = options.features(), E = options.num_experts();
  auto flat = x.reshape({-1, H});
  auto with_bias = [](torch::Tensor h, const torch::Tensor& b) { return b.defined() ? h + b : h; };
  auto h = with_bias(torch::einsum("nh,eih->nei", {flat, w_up}), b_up);  // [N, E, I]
  h = options.gated()
          ? activation(options.activation(), with_bias(torch::einsum("nh,eih->nei", {flat, w_gate}), b_gate)) * h
          : activation(options.activation(), h);
  auto shape = x.sizes().vec();
  shape.back() = E;
  return h.norm(2, -1).view(shape);
}

torch::Tensor MoeFfnImpl::router_distillation_loss(const torch::Tensor& x) {
  auto gate = std::dynamic_pointer_cast<TopKRouterImpl>(router);
  if (!gate) throw_error(kMoeFfnTag, "router distillation needs a TopKRouter");
  torch::Tensor target;
  {
    torch::NoGradGuard no_grad;
    auto norms = activation_norms(x);
    auto top = std::get<1>(norms.topk(gate->options.k(), -1));
    target = torch::zeros_like(norms).scatter(-1, top, 1.0);
  }
  auto logits = gate->logits(x).to(torch::kFloat32);
  auto mask = gate->token_mask(x);
  auto loss =
      torch::binary_cross_entropy_with_logits(logits, target.to(torch::kFloat32), {}, {}, at::Reduction::None).mean(-1);
  if (!mask.defined()) return loss.mean();
  auto m = mask.to(torch::kFloat32);
  return (loss * m).sum() / m.sum().clamp_min(1.0);
}

void MoeFfnImpl::merge(LinearImpl&) {
  throw std::logic_error("[moe ffn] routed experts depend on the input and cannot be merged into the weights");
}

void MoeFfnImpl::unmerge(LinearImpl&) { throw std::logic_error("[moe ffn] not merged"); }

}  // namespace modula
