#include "modula/routing/top_k.h"

#include <stdexcept>
#include <string>

#include "modula/util/error.h"

namespace modula {

void TopKRouterOptions::validate() const {
  static constexpr std::string_view kTag = "top-k router";
  if (features() <= 0) throw_error(kTag, "features must be positive, got " + std::to_string(features()));
  if (num_experts() <= 0) throw_error(kTag, "num_experts must be positive, got " + std::to_string(num_experts()));
  if (k() < 1 || k() > num_experts())
    throw_error(kTag,
                "k must be in [1, num_experts = " + std::to_string(num_experts()) + "], got " + std::to_string(k()));
  if (load_balance_coef() < 0)
    throw_error(kTag, "load_balance_coef must be >= 0, got " + std::to_string(load_balance_coef()));
  if (z_loss_coef() < 0) throw_error(kTag, "z_loss_coef must be >= 0, got " + std::to_string(z_loss_coef()));
}

TopKRouterImpl::TopKRouterImpl(const TopKRouterOptions& options_, std::shared_ptr<RoutingContext> context_)
    : options(options_), context(std::move(context_)) {
  options.validate();
  reset();
}

void TopKRouterImpl::reset() {
  auto linear = torch::nn::LinearOptions(options.features(), options.num_experts()).bias(false);
  gate = register_module("gate", torch::nn::Linear(linear));
  if (options.noisy()) {
    noise_gate = register_module("noise_gate", torch::nn::Linear(linear));
    torch::NoGradGuard no_grad;
    noise_gate->weight.zero_();
  }
}

torch::Tensor TopKRouterImpl::logits(const torch::Tensor& x) const {
  if (!x.defined() || x.dim() < 1 || x.size(-1) != options.features())
    throw_error("top-k router", "input must be [.., " + std::to_string(options.features()) + "], got " +
                                    (x.defined() ? c10::str(x.sizes()) : std::string("an undefined tensor")));
  return torch::nn::functional::linear(x, gate->weight);
}

torch::Tensor TopKRouterImpl::token_mask(const torch::Tensor& x) const {
  if (!context || !context->mask().defined()) return {};
  const auto& mask = context->mask();
  const bool fits = x.dim() == 3 && mask.dim() == 2 && mask.size(0) == x.size(0) && mask.size(1) >= x.size(1);
  if (!fits)
    throw_error("top-k router", "padding mask " + c10::str(mask.sizes()) + " does not fit the routed input " +
                                    c10::str(x.sizes()) + " (want [N, S >= T] for [N, T, H])");
  return mask.narrow(1, mask.size(1) - x.size(1), x.size(1)).to(x.device()) != 0;
}

Routing TopKRouterImpl::route(const torch::Tensor& x) {
  auto h = logits(x).to(torch::kFloat32);
  // Noisy top-k gating (Shazeer et al. 2017, eq. 4): H(x) = x W_g + ε · softplus(x W_noise).
  if (options.noisy() && is_training())
    h = h + torch::randn_like(h) * torch::softplus(noise_gate->forward(x).to(torch::kFloat32));
  auto probs = torch::softmax(h, -1);
  auto [top, indices] = probs.topk(options.k(), -1);
  // softmax(KeepTopK(H)) = the top-k probabilities renormalised.
  if (options.normalize()) top = top / top.sum(-1, /*keepdim=*/true);
  Routing r;
  r.weights = torch::zeros_like(probs).scatter(-1, indices, top).to(x.scalar_type());
  r.indices = indices;
  aux_loss = torch::Tensor();
  if (is_training() && (options.load_balance_coef() > 0 || options.z_loss_coef() > 0)) {
    auto mask = token_mask(x);
    aux_loss = load_balancing_loss(probs, indices, mask, options.load_balance_coef()) +
               router_z_loss(h, mask, options.z_loss_coef());
  }
  return r;
}

namespace {

// Token weights [tokens] (1 real, 0 padding) and their count, for masked means.
std::pair<torch::Tensor, torch::Tensor> real_tokens(const torch::Tensor& mask, int64_t tokens,
                                                    const torch::Tensor& like) {
  if (!mask.defined()) {
    auto ones = torch::ones({tokens}, like.options().dtype(torch::kFloat32));
    return {ones, ones.sum()};
  }
  if (mask.numel() != tokens)
    throw_error("top-k router", "mask " + c10::str(mask.sizes()) + " holds " + std::to_string(mask.numel()) +
                                    " tokens, the router saw " + std::to_string(tokens));
  auto m = mask.reshape({-1}).to(like.device(), torch::kFloat32);
  return {m, m.sum().clamp_min(1.0)};
}

}  // namespace

torch::Tensor load_balancing_loss(const torch::Tensor& probs, const torch::Tensor& indices, const torch::Tensor& mask,
                                  double coef) {
  const int64_t E = probs.size(-1), k = indices.size(-1);
  auto p = probs.reshape({-1, E}).to(torch::kFloat32);
  auto [m, n] = real_tokens(mask, p.size(0), p);
  // f_i: dispatches to expert i over all k·n dispatches; P_i: mean probability of expert i.
  auto dispatched = torch::one_hot(indices.reshape({-1, k}), E).sum(1).to(torch::kFloat32);  // [tokens, E]
  auto f = (dispatched * m.unsqueeze(1)).sum(0) / (n * static_cast<double>(k));
  auto P = (p * m.unsqueeze(1)).sum(0) / n;
  return coef * static_cast<double>(E) * (f * P).sum();
}

torch::Tensor router_z_loss(const torch::Tensor& logits, const torch::Tensor& mask, double coef) {
  auto z = torch::logsumexp(logits.reshape({-1, logits.size(-1)}).to(torch::kFloat32), -1);
  auto [m, n] = real_tokens(mask, z.size(0), z);
  return coef * (z.pow(2) * m).sum() / n;
}

}  // namespace modula
