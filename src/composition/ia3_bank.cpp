#include "modula/composition/ia3_bank.h"

#include <stdexcept>

#include "modula/util/error.h"

namespace modula {
namespace {
constexpr std::string_view kIa3BankTag = "ia3 bank";
}  // namespace

Ia3BankImpl::Ia3BankImpl(int64_t in, int64_t out, int64_t M, bool feedforward) {
  if (in <= 0 || out <= 0 || M <= 0) throw_error(kIa3BankTag, "in, out and num_modules must be positive");
  l_out = register_parameter("l_out", torch::ones({M, out}), !feedforward);
  l_in = register_parameter("l_in", torch::ones({M, in}), feedforward);
  any_feedforward = feedforward, any_output = !feedforward;
}

// Checks the members (same shape, none merged) and returns the first one present.
static const Ia3Impl* check_members(const std::vector<std::shared_ptr<Ia3Impl>>& modules) {
  const Ia3Impl* first = nullptr;
  for (size_t m = 0; m < modules.size(); ++m) {
    const auto& ia3 = modules[m];
    if (!ia3) continue;
    if (!first) first = ia3.get();
    if (ia3->options.in_features() != first->options.in_features() ||
        ia3->options.out_features() != first->options.out_features())
      throw_error(kIa3BankTag, "module " + std::to_string(m) + " has another shape than the first module at this site");
    if (ia3->merged)
      throw_error(kIa3BankTag, "module " + std::to_string(m) + " is merged into the weights; unmerge it first");
  }
  if (!first) throw_error(kIa3BankTag, "no modules to stack");
  return first;
}

// l as the bank holds it: 1 + scale·(l − 1), flattened.
static torch::Tensor scaled(const Ia3Impl& ia3) { return 1 + ia3.scale * (ia3.ia3_l.flatten() - 1); }

std::shared_ptr<Ia3BankImpl> Ia3BankImpl::view(const std::vector<std::shared_ptr<Ia3Impl>>& modules) {
  check_members(modules);
  std::shared_ptr<Ia3BankImpl> bank(new Ia3BankImpl());
  for (const auto& ia3 : modules)
    if (ia3) (ia3->options.feedforward() ? bank->any_feedforward : bank->any_output) = true;
  bank->members_ = modules;
  bank->sync();
  return bank;
}

void Ia3BankImpl::sync() {
  if (members_.empty()) return;
  const Ia3Impl* first = nullptr;
  for (const auto& m : members_)
    if (m && !first) first = m.get();
  auto opts = first->ia3_l.options();
  auto ones_out = torch::ones({first->options.out_features()}, opts),
       ones_in = torch::ones({first->options.in_features()}, opts);
  std::vector<torch::Tensor> out, in;
  for (const auto& m : members_) {
    const bool ff = m && m->options.feedforward();
    out.push_back(m && !ff ? scaled(*m) : ones_out);
    in.push_back(ff ? scaled(*m) : ones_in);
  }
  l_out = torch::stack(out), l_in = torch::stack(in);
}

std::shared_ptr<Ia3BankImpl> Ia3BankImpl::stack(const std::vector<std::shared_ptr<Ia3Impl>>& modules) {
  const Ia3Impl* first = check_members(modules);
  const auto M = static_cast<int64_t>(modules.size());
  std::shared_ptr<Ia3BankImpl> bank(new Ia3BankImpl());
  auto opts = first->ia3_l.options();
  auto out = torch::ones({M, first->options.out_features()}, opts),
       in = torch::ones({M, first->options.in_features()}, opts);
  torch::NoGradGuard no_grad;
  for (int64_t m = 0; m < M; ++m) {
    const auto& ia3 = modules[m];
    if (!ia3) continue;
    (ia3->options.feedforward() ? in : out)[m].copy_(scaled(*ia3));
    (ia3->options.feedforward() ? bank->any_feedforward : bank->any_output) = true;
  }
  bank->l_out = bank->register_parameter("l_out", out);
  bank->l_in = bank->register_parameter("l_in", in);
  return bank;
}

torch::Tensor Ia3BankImpl::apply(const SiteInput& in, const torch::Tensor& v_out, const torch::Tensor& v_in) const {
  if (!in.y.defined()) throw_error(kIa3BankTag, "needs the site output y");
  auto d = torch::zeros_like(in.y);
  if (any_output) d = d + in.y * v_out.to(in.y.scalar_type());
  if (any_feedforward) {
    if (!in.base) throw_error(kIa3BankTag, "feed-forward (IA)³ needs the Linear site's weight");
    d = d + torch::matmul(in.x * v_in.to(in.x.scalar_type()), in.base->weight_out_in().t());
  }
  return d;
}

torch::Tensor Ia3BankImpl::mixed(const SiteInput& in, const torch::Tensor& w) {
  sync();
  const auto M = num_modules();
  if (w.size(-1) != M || w.dim() < 2 || w.dim() > 3 || w.size(0) != in.x.size(0))
    throw_error(kIa3BankTag, "routing weights " + c10::str(w.sizes()) + " for " + std::to_string(in.x.size(0)) +
                                 " rows and " + std::to_string(M) + " modules");
  auto w3 = w.dim() == 2 ? w.unsqueeze(1) : w;  // [N, 1|T, M]
  auto wl = w3.to(l_out.scalar_type());
  return apply(in, torch::matmul(wl, l_out - 1), torch::matmul(wl, l_in - 1));  // v = Σ_m w_m (l_m − 1)
}

torch::Tensor Ia3BankImpl::selected(const SiteInput& in, const torch::Tensor& idx, const torch::Tensor& w) {
  sync();
  if (idx.dim() != 2) return mixed(in, dense_weights(idx, w, num_modules()));
  const auto N = idx.size(0), k = idx.size(1);
  auto flat = idx.clamp_min(0).reshape({-1});
  auto coef = (w * (idx >= 0)).to(l_out.scalar_type()).view({N, k, 1});
  auto v = [&](const torch::Tensor& l) { return ((l.index_select(0, flat).view({N, k, -1}) - 1) * coef).sum(1, true); };
  return apply(in, v(l_out), v(l_in));  // [N, 1, F]: only the routed rows' vectors
}

}  // namespace modula
