// Function aggregation on block sites (survey §5; AdapterHub's composition blocks).
//
// A composite is a block-site module whose children are other block-site modules: the
// member adapters (bottleneck adapters attached at the same site) or nested composites.
// Each child c maps the sub-layer input/output (x, y) to a new output c(x, y); its
// contribution is
//
//   d_c(x, y) = c(x, y) − y        (= s · f(y) for a residual bottleneck adapter)
//
// and the composites combine the children:
//
//   Stack      y ← c_k(x, … c_2(x, c_1(x, y)))              (MAD-X, Pfeiffer et al. 2020)
//   Parallel   y ← y + Σ_c d_c(x, y)
//   Average    y ← y + Σ_c w_c d_c(x, y) / Σ_c w_c
//   Fusion     y ← y + Σ_c softmax_c(q·k_c / T) V d_c          (Pfeiffer et al. 2021)
//   Routed     y ← y + Σ_c r_c d_c  with r from a router (fixed routing: one c per row)
//
// Member adapters stay attached to their site (so their parameters keep their names) but
// are switched off there (enabled = false): the composite runs them instead.
// attach_composition / detach_composition do that bookkeeping.
//
//   auto stack = std::make_shared<StackImpl>(std::vector<std::shared_ptr<SiteModule>>{lang, task});
//   attach_composition(*site, "compose", stack);
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "modula/backbone/layers.h"

namespace modula {
namespace detail {
struct BottleneckStack;
class BottleneckStacker;
}  // namespace detail

class CompositeImpl : public SiteModule {
 public:
  // Throws std::invalid_argument (naming `op`) if `children` is empty, holds a null or
  // a linear-site module. Nested composites are registered as submodules "c<i>"; member
  // adapters are not (their site owns them).
  CompositeImpl(std::string op, std::vector<std::shared_ptr<SiteModule>> children);

  SiteKind site_kind() const override { return SiteKind::Block; }
  bool mergeable() const override { return false; }
  // Throw std::invalid_argument: a composition of non-linear modules has no weight delta.
  void merge(LinearImpl& base) override;
  void unmerge(LinearImpl& base) override;

  const std::string& op() const { return op_; }
  const std::vector<std::shared_ptr<SiteModule>>& children() const { return children_; }
  // The member adapters under this composite, depth first (nested composites expanded,
  // identity placeholders left out).
  std::vector<std::shared_ptr<SiteModule>> leaves() const;

 protected:
  // d_c(x, y) for every child, stacked on a new dimension before the features: [.., C, H].
  // Residual bottleneck adapters of one shape and kind (identity placeholders as zeros) run
  // as one batched kernel (einsum over stacked weights); other children one by one.
  torch::Tensor contributions(const torch::Tensor& x, const torch::Tensor& y);
  // The children's weights stacked when they are all bottleneck adapters of one shape (and
  // identity placeholders), kept between calls without autograd; null otherwise.
  const detail::BottleneckStack* bottleneck_stack();

 private:
  std::string op_;
  std::vector<std::shared_ptr<SiteModule>> children_;
  std::shared_ptr<detail::BottleneckStacker> stacker_;
};

// The identity y ← y: stands in for a member that has no module at this site (e.g. a
// routed adapter that only adapts the feed-forward blocks, seen at an attention block).
class IdentityBlockImpl : public SiteModule {
 public:
  SiteKind site_kind() const override { return SiteKind::Block; }
  torch::Tensor transform_block(const torch::Tensor&, const torch::Tensor& y) override { return y; }
  void merge(LinearImpl&) override {}
  void unmerge(LinearImpl&) override {}
};
TORCH_MODULE(IdentityBlock);

// Attaches `root` at `site` as `name` and switches its member adapters off at the site
// (they run inside the composite). Throws std::invalid_argument if a member is not
// attached at `site`.
void attach_composition(SiteHost& site, const std::string& name, const std::shared_ptr<CompositeImpl>& root);
// Detaches it and switches the members back on.
void detach_composition(SiteHost& site, const std::string& name);

}  // namespace modula
