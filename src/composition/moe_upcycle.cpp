#include "modula/composition/moe_upcycle.h"

#include <stdexcept>

#include "modula/routing/top_k.h"

namespace modula {

void UpcycleOptions::validate() const {
  // The router and layer options check every field; build them once to fail early.
  MoeFfnOptions(1, 1, num_experts()).dropless(dropless()).capacity_factor(capacity_factor()).validate();
  TopKRouterOptions(1, num_experts())
      .k(k())
      .load_balance_coef(load_balance_coef())
      .z_loss_coef(z_loss_coef())
      .validate();
}

namespace {

// The dense FFN's architecture (activation, gating, biases) as E experts of I neurons behind a
// fresh top-k router with renormalised weights; the experts' weights are left to the caller.
MoeFfn top_k_block(const DenseFfn& ffn, const UpcycleOptions& options, int64_t I) {
  options.validate();
  const int64_t E = options.num_experts(), H = ffn.features();
  auto router = TopKRouter(TopKRouterOptions(H, E)
                               .k(options.k())
                               .noisy(options.noisy())
                               .normalize(true)
                               .load_balance_coef(options.load_balance_coef())
                               .z_loss_coef(options.z_loss_coef()),
                           options.context());
  return MoeFfn(MoeFfnOptions(H, I, E)
                    .activation(ffn.activation)
                    .gated(ffn.gated)
                    .bias(ffn.b_up.defined() || ffn.b_gate.defined() || ffn.b_down.defined())
                    .weighted(true)
                    .dropless(options.dropless())
                    .capacity_factor(options.capacity_factor()),
                router.ptr());
}

}  // namespace

MoeFfn upcycle_ffn(const DenseFfn& ffn, const UpcycleOptions& options) {
  auto moe = top_k_block(ffn, options, ffn.intermediate());
  const bool bias = moe->options.bias();
  torch::NoGradGuard no_grad;
  auto copy = [](torch::Tensor& dst, const torch::Tensor& src) {
    if (src.defined())
      dst.copy_(src.unsqueeze(0).expand(dst.sizes()));
    else
      dst.zero_();
  };
  copy(moe->w_up, ffn.w_up);
  if (ffn.gated) copy(moe->w_gate, ffn.w_gate);
  copy(moe->w_down, ffn.w_down);
  if (bias) {
    copy(moe->b_up, ffn.b_up);
    if (ffn.gated) copy(moe->b_gate, ffn.b_gate);
    copy(moe->b_down, ffn.b_down);
  }
  return moe;
}

MoeFfn random_moe_ffn(const DenseFfn& ffn, const UpcycleOptions& options, int64_t expert_size, double init_std) {
  auto moe = top_k_block(ffn, options, expert_size > 0 ? expert_size : ffn.intermediate());
  torch::NoGradGuard no_grad;
  for (auto& p : moe->named_parameters()) {
    if (p.key().rfind("router.", 0) == 0) continue;  // the router keeps its own init
    if (p.key().rfind("w_", 0) == 0)
      p.value().normal_(0.0, init_std);
    else
      p.value().zero_();
  }
  return moe;
}

std::vector<std::pair<std::string, MoeFfn>> upcycle(Backbone& model, const UpcycleOptions& options) {
  options.validate();
  return replace_ffns(model, options.layers(), options.name(),
                      [&](const DenseFfn& ffn) { return upcycle_ffn(ffn, options); });
}

}  // namespace modula
