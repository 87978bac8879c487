#include "modula/aggregation/composite.h"

#include <stdexcept>

#include "aggregation/bottleneck_batch.h"
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

const detail::BottleneckStack* CompositeImpl::bottleneck_stack() {
  if (!stacker_) stacker_ = std::make_shared<detail::BottleneckStacker>();
  return stacker_->stack(children_);
}

torch::Tensor CompositeImpl::contributions(const torch::Tensor& x, const torch::Tensor& y) {
  if (children_.size() > 1) {
    if (const auto* st = bottleneck_stack()) return detail::all_contributions(*st, x, y);
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
