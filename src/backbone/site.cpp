#include "modula/backbone/site.h"

#include <stdexcept>

#include "modula/util/error.h"

namespace modula {

std::string to_string(SiteKind kind) { return kind == SiteKind::Linear ? "linear" : "block"; }

torch::nn::Module& SiteHost::owner() {
  auto* module = dynamic_cast<torch::nn::Module*>(this);
  if (!module) throw std::logic_error("[site] a SiteHost must be mixed into a torch::nn::Module");
  return *module;
}

void SiteHost::attach(const std::string& name, std::shared_ptr<SiteModule> m) {
  if (name.empty() || name.find('.') != std::string::npos)
    throw_error("site", "module name '" + name + "' must be non-empty and contain no '.'");
  if (!m) throw_error("site", "cannot attach a null module as '" + name + "'");
  if (m->site_kind() != kind_)
    throw_error("site", "'" + name + "' is a " + to_string(m->site_kind()) + "-site module; this is a " +
                            to_string(kind_) + " site");
  if (module(name)) throw_error("site", "a module named '" + name + "' is already attached");
  auto& host = owner();
  if (!adapters_) adapters_ = host.register_module("adapters", std::make_shared<torch::nn::Module>());
  adapters_->register_module(name, m);
  m->train(host.is_training());
  names_.push_back(name);
  modules_.push_back(std::move(m));
}

void SiteHost::detach(const std::string& name) {
  for (size_t i = 0; i < names_.size(); ++i) {
    if (names_[i] != name) continue;
    if (modules_[i]->merged) throw_error("site", "unmerge '" + name + "' before detaching it");
    adapters_->unregister_module(name);
    names_.erase(names_.begin() + static_cast<long>(i));
    modules_.erase(modules_.begin() + static_cast<long>(i));
    return;
  }
  throw_error("site", "no module named '" + name + "' attached");
}

std::shared_ptr<SiteModule> SiteHost::module(const std::string& name) const {
  for (size_t i = 0; i < names_.size(); ++i)
    if (names_[i] == name) return modules_[i];
  return nullptr;
}

}  // namespace modula
