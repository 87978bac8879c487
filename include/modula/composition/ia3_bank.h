// A bank of M (IA)³ modules for one Linear site (Liu et al. 2022), for routing and mixed
// batches (algorithm1.h). (IA)³ is linear in l − 1, so module m contributes
//
//   d_m(x, y) = y ⊙ (l_out,m − 1) + W (x ⊙ (l_in,m − 1))
//
// where attention/output modules have l_in = 1 and feed-forward modules l_out = 1: one
// module alone gives exactly (W x + b) ⊙ l or W (x ⊙ l) + b. Any routing combines the
// vectors first (v = Σ_m w_m (l_m − 1)) and runs one elementwise product / one matmul;
// parameter averaging equals output averaging.
#pragma once

#include "modula/modules/ia3.h"
#include "modula/routing/algorithm1.h"

namespace modula {

class Ia3BankImpl : public torch::nn::Module, public ModuleBank {
 public:
  // Stacks (IA)³ modules (null = absent: l = 1) with their scales folded in
  // (1 + scale·(l − 1)). Throws std::invalid_argument naming the module index when the
  // shapes disagree or none is given.
  static std::shared_ptr<Ia3BankImpl> stack(const std::vector<std::shared_ptr<Ia3Impl>>& modules);
  // A bank over modules that stay where they are (a route(...) over attached (IA)³
  // adapters): l_out / l_in are re-stacked from the members at every call, so gradients
  // reach the members' own vectors and their scale is read live. No parameters of its own.
  // Same checks as stack().
  static std::shared_ptr<Ia3BankImpl> view(const std::vector<std::shared_ptr<Ia3Impl>>& modules);
  // M identity modules (l = 1) for a site with `in` inputs and `out` outputs; `feedforward`
  // picks which vector trains.
  Ia3BankImpl(int64_t in, int64_t out, int64_t num_modules, bool feedforward);

  torch::Tensor selected(const SiteInput& in, const torch::Tensor& idx, const torch::Tensor& w) override;
  torch::Tensor mixed(const SiteInput& in, const torch::Tensor& w) override;
  torch::Tensor averaged(const SiteInput& in, const torch::Tensor& w) override { return mixed(in, w); }
  int64_t num_modules() const override { return l_out.size(0); }
  std::string kind() const override { return "ia3 bank"; }

  torch::Tensor l_out, l_in;  // [M, out], [M, in]
  bool any_feedforward = false, any_output = false;

 private:
  Ia3BankImpl() = default;
  void sync();  // view banks: re-stack from the members
  std::vector<std::shared_ptr<Ia3Impl>> members_;
  // y ⊙ v_out + W (x ⊙ v_in) for combined vectors v [N, 1|T, F].
  torch::Tensor apply(const SiteInput& in, const torch::Tensor& v_out, const torch::Tensor& v_in) const;
};
TORCH_MODULE(Ia3Bank);

}  // namespace modula
