#include "modula/aggregation/composite.h"

#include <stdexcept>

#include "modula/modules/bottleneck.h"
#include "modula/util/error.h"

namespace modula {

CompositeImpl::CompositeImpl(std::string op, std::vector<std::shared_ptr<SiteModule>> children)
    : op_(std::move(op)), children_(std::move(children)) {
  if (children_.empty()) throw_error(op_, "needs at least one module");
  for (size_t i = 0; i < children_.size(); ++i) {
    const auto& c = children_[i];
    if (!c) throw_error(op_, "module " + std::to_string(i) + " is null");
    if (c->site_kind() != SiteKind::Block)
      throw_error(op_, "module " + std::to_string(i) +
                           " is a linear-site module; compositions combine block-site modules (bottleneck adapters)");
    if (std::dynamic_pointer_cast<CompositeImpl>(c)) register_module("c" + std::to_string(i), c);
  }
}

void CompositeImpl::merge(LinearImpl&) {
  throw_error(op_, "a composition of block-site modules cannot be merged into weights");
}

void CompositeImpl::unmerge(LinearImpl&) { throw_error(op_, "compositions are never merged"); }

std::vector<std::shared_ptr<SiteModule>> CompositeImpl::leaves() const {
  std::vector<std::shared_ptr<SiteModule>> out;
  for (const auto& c : children_) {
    if (auto sub = std::dynamic_pointer_cast<CompositeImpl>(c)) {
      auto more = sub->leaves();
      out.insert(out.end(), more.begin(), more.end());
    } else if (!std::dynamic_pointer_cast<IdentityBlockImpl>(c)) {
      out.push_back(c);
    }
  }
  return out;
}

namespace {

// Children that are residual bottleneck adapters of one shape and kind, without a
// LayerNorm: their contributions come from one batched kernel. Empty otherwise.
std::vector<std::shared_ptr<BottleneckImpl>> uniform_bottlenecks(
    const std::vector<std::shared_ptr<SiteModule>>& children) {
  std::vector<std::shared_ptr<BottleneckImpl>> out;
  for (const auto& c : children) {
    auto b = std::dynamic_pointer_cast<BottleneckImpl>(c);
    if (!b || b->adapter_norm_before || !b->options.residual()) return {};
    const auto &o = b->options, &first = out.empty() ? o : out.front()->options;
    if (o.bottleneck_size() != first.bottleneck_size() || o.non_linearity() != first.non_linearity() ||
        o.mode() != first.mode())
      return {};
    out.push_back(b);
  }
  return out;
}

// d_c = s_c · (W_up,c act(W_down,c h + b_down,c) + b_up,c) for all c at once: [.., C, H].
torch::Tensor batched_bottlenecks(const std::vector<std::shared_ptr<BottleneckImpl>>& bs, const torch::Tensor& x,
                                  const torch::Tensor& y) {
  std::vector<torch::Tensor> wd, bd, wu, bu;
  std::vector<double> s;
  for (const auto& b : bs) {
    wd.push_back(b->adapter_down->weight);
    bd.push_back(b->adapter_down->bias);
    wu.push_back(b->adapter_up->weight);
    bu.push_back(b->adapter_up->bias);
    s.push_back(b->scale * b->options.scaling());
  }
  const auto& h = bs.front()->options.mode() == "parallel" ? x : y;
  auto z = torch::einsum("...h,cmh->...cm", {h, torch::stack(wd)}) + torch::stack(bd);
  auto f = torch::einsum("...cm,chm->...ch", {activation(bs.front()->options.non_linearity(), z), torch::stack(wu)}) +
           torch::stack(bu);
  return f * torch::tensor(s, torch::kFloat64).to(f.device(), f.scalar_type()).unsqueeze(-1);
}

}  // namespace

torch::Tensor CompositeImpl::contributions(const torch::Tensor& x, const torch::Tensor& y) {
  if (children_.size() > 1) {
    auto bs = uniform_bottlenecks(children_);
    if (!bs.empty()) return batched_bottlenecks(bs, x, y);
  }
  std::vector<torch::Tensor> d;
  d.reserve(children_.size());
  for (auto& c : children_) d.push_back(c->transform_block(x, y) - y);  // d_c = c(x, y) − y
  return torch::stack(d, -2);
}

namespace {

std::shared_ptr<CompositeImpl> composite_at(SiteHost& site, const std::string& name) {
  auto c = std::dynamic_pointer_cast<CompositeImpl>(site.module(name));
  if (!c) throw_error("composition", "no composition named '" + name + "' at this site");
  return c;
}

bool attached_at(const SiteHost& site, const std::shared_ptr<SiteModule>& m) {
  for (const auto& s : site.site_modules())
    if (s == m) return true;
  return false;
}

}  // namespace

void attach_composition(SiteHost& site, const std::string& name, const std::shared_ptr<CompositeImpl>& root) {
  if (!root) throw_error("composition", "cannot attach a null composition as '" + name + "'");
  auto members = root->leaves();
  for (const auto& m : members)
    if (!attached_at(site, m))
      throw_error("composition", "'" + name + "': a member module is not attached at this site");
  site.attach(name, root);
  for (auto& m : members) m->enabled = false;  // the composite runs them
}

void detach_composition(SiteHost& site, const std::string& name) {
  auto root = composite_at(site, name);
  site.detach(name);
  for (auto& m : root->leaves()) m->enabled = true;
}

}  // namespace modula
