#include "aggregation/bottleneck_batch.h"

#include "modula/aggregation/composite.h"
#include "modula/modules/bottleneck.h"
#include "modula/util/huge_pages.h"
#include "modules/lora_kernels.h"

namespace modula::detail {
namespace {

// The adapters (null: identity placeholder), or nullopt when the children do not qualify.
std::optional<std::vector<const BottleneckImpl*>> stackable(const std::vector<std::shared_ptr<SiteModule>>& children) {
  std::vector<const BottleneckImpl*> bs;
  const BottleneckImpl* first = nullptr;
  for (const auto& c : children) {
    const auto* b = dynamic_cast<const BottleneckImpl*>(c.get());
    if (!b) {
      if (!dynamic_cast<const IdentityBlockImpl*>(c.get())) return std::nullopt;
      bs.push_back(nullptr);
      continue;
    }
    if (!b->options.residual()) return std::nullopt;
    const auto &o = b->options, &f = first ? first->options : o;
    if (o.features() != f.features() || o.bottleneck_size() != f.bottleneck_size() ||
        o.non_linearity() != f.non_linearity() || o.mode() != f.mode() || o.ln_before() != f.ln_before())
      return std::nullopt;
    if (o.ln_before() &&
        b->adapter_norm_before->options.eps() != (first ? first : b)->adapter_norm_before->options.eps())
      return std::nullopt;
    if (!first) first = b;
    bs.push_back(b);
  }
  if (!first) return std::nullopt;
  return bs;
}

std::vector<torch::Tensor> tensors_of(const BottleneckImpl& b) {
  std::vector<torch::Tensor> t = {b.adapter_down->weight, b.adapter_down->bias, b.adapter_up->weight,
                                  b.adapter_up->bias};
  if (b.adapter_norm_before) t.push_back(b.adapter_norm_before->weight), t.push_back(b.adapter_norm_before->bias);
  return t;
}

BottleneckStack build(const std::vector<const BottleneckImpl*>& bs, bool keep) {
  const BottleneckImpl* first = nullptr;
  for (const auto* b : bs)
    if (b && !first) first = b;
  std::vector<torch::Tensor> wd, bd, wu, bu, lw, lb;
  std::vector<double> s;
  const auto opts = first->adapter_down->weight.options();
  const bool ln = first->options.ln_before();
  const int64_t H = first->options.features(), m = first->options.bottleneck_size();
  for (const auto* b : bs) {
    wd.push_back(b ? b->adapter_down->weight : torch::zeros({m, H}, opts));
    bd.push_back(b ? b->adapter_down->bias : torch::zeros({m}, opts));
    wu.push_back(b ? b->adapter_up->weight : torch::zeros({H, m}, opts));
    bu.push_back(b ? b->adapter_up->bias : torch::zeros({H}, opts));
    s.push_back(b ? b->scale * b->options.scaling() : 0.0);
    if (ln) lw.push_back(b ? b->adapter_norm_before->weight : torch::ones({H}, opts));
    if (ln) lb.push_back(b ? b->adapter_norm_before->bias : torch::zeros({H}, opts));
  }
  BottleneckStack st;
  if (ln) st.ln_w = torch::stack(lw), st.ln_b = torch::stack(lb), st.ln_eps = first->adapter_norm_before->options.eps();
  st.down_w = torch::stack(wd), st.down_b = torch::stack(bd), st.up_w = torch::stack(wu), st.up_b = torch::stack(bu);
  if (keep) st.down_w = on_huge_pages(st.down_w), st.up_w = on_huge_pages(st.up_w);  // read at every decode step
  st.s = torch::tensor(s, torch::kFloat64).to(opts.device(), opts.dtype().toScalarType());
  st.non_linearity = first->options.non_linearity();
  st.parallel = first->options.mode() == "parallel";
  return st;
}

}  // namespace

const BottleneckStack* BottleneckStacker::stack(const std::vector<std::shared_ptr<SiteModule>>& children) {
  auto bs = stackable(children);
  if (!bs) return nullptr;
  std::vector<torch::Tensor> sources;
  std::vector<double> scales;
  bool grad = false;
  for (const auto* b : *bs) {
    if (!b) continue;
    for (auto& t : tensors_of(*b)) {
      grad = grad || t.requires_grad();
      sources.push_back(t);
    }
    scales.push_back(b->scale * b->options.scaling());
  }
  grad = grad && torch::GradMode::is_enabled();
  bool current = !grad && stack_ && sources.size() == sources_.size() && scales == scales_;
  for (size_t i = 0; current && i < sources.size(); ++i)
    current = sources[i].is_same(sources_[i]) && sources[i]._version() == versions_[i];
  if (current) return &*stack_;
  stack_ = build(*bs, !grad);
  sources_.clear(), versions_.clear(), scales_ = scales;
  if (!grad)  // a stack in a graph is never re-used
    for (auto& t : sources) sources_.push_back(t), versions_.push_back(t._version());
  return &*stack_;
}

// LayerNorm without its affine part (each child applies its own).
torch::Tensor normalized(const BottleneckStack& st, const torch::Tensor& h) {
  return torch::layer_norm(h, {h.size(-1)}, {}, {}, st.ln_eps);
}

torch::Tensor all_contributions(const BottleneckStack& st, const torch::Tensor& x, const torch::Tensor& y) {
  const auto& h = st.parallel ? x : y;
  auto z = st.ln_w.defined()  // child c reads LN_c(h) = norm(h) γ_c + β_c
               ? torch::einsum("...ch,cmh->...cm", {normalized(st, h).unsqueeze(-2) * st.ln_w + st.ln_b, st.down_w})
               : torch::einsum("...h,cmh->...cm", {h, st.down_w});
  z = z + st.down_b;
  auto f = torch::einsum("...cm,chm->...ch", {activation(st.non_linearity, z), st.up_w}) + st.up_b;
  return f * st.s.unsqueeze(-1);
}

torch::Tensor row_contributions(const BottleneckStack& st, const torch::Tensor& x, const torch::Tensor& y,
                                const torch::Tensor& idx, const torch::Tensor& w) {
  const int64_t N = x.size(0), T = x.size(1);
  auto id = idx.clamp_min(0).to(torch::kLong);
  auto pick = [&](const torch::Tensor& t) { return t.index_select(0, id); };  // row n: its child's
  auto h = st.parallel ? x : y;                                               // [N, T, H]
  if (st.ln_w.defined()) h = normalized(st, h) * pick(st.ln_w).unsqueeze(1) + pick(st.ln_b).unsqueeze(1);
  auto coef = (w * (idx >= 0)).to(h.scalar_type()) * pick(st.s);  // [N]
  const bool autograd = torch::GradMode::is_enabled() && (h.requires_grad() || st.down_w.requires_grad() ||
                                                          st.up_w.requires_grad() || w.requires_grad());
  if (T == 1 && !autograd && cpu_float32({h, st.down_w, st.up_w})) {  // decode: each row reads its weights
    auto z = gathered_matvec(st.down_w, h.reshape({N, -1}), idx) + pick(st.down_b);
    auto f = gathered_matvec(st.up_w, activation(st.non_linearity, z), idx) + pick(st.up_b);
    return (f * coef.unsqueeze(1)).unsqueeze(1);
  }
  auto z = torch::baddbmm(pick(st.down_b).unsqueeze(1), h, pick(st.down_w).transpose(1, 2));  // [N, T, m]
  auto f = torch::baddbmm(pick(st.up_b).unsqueeze(1), activation(st.non_linearity, z), pick(st.up_w).transpose(1, 2));
  return f * coef.view({N, 1, 1});
}

}  // namespace modula::detail
