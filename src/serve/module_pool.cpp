#include "modula/serve/module_pool.h"

#include <limits.h>
#include <stdlib.h>

#include <algorithm>
#include <fstream>

#include "modula/composition/mixed.h"
#include "modula/composition/registry.h"
#include "modula/util/dtype.h"
#include "modula/util/error.h"
#include "modula/util/fs.h"
#include "modula/util/json.h"

namespace modula::serve {
namespace {

constexpr std::string_view kModulePoolTag = "serve";
constexpr size_t kMaxCompositions = 4096;  // catalogued specs; unused ones are forgotten beyond

bool valid_name(const std::string& n) {
  if (n.empty() || n.size() > 128 || n == "." || n == ".." || n == kBaseAdapter) return false;
  return std::all_of(n.begin(), n.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' || c == ':' || c == '.';
  });
}

std::string real_path(const std::string& p) {
  char buf[PATH_MAX];
  if (!::realpath(p.c_str(), buf)) return {};
  return buf;
}

bool inside(const std::string& path, const std::string& root) {
  return !root.empty() && path.size() > root.size() && path.compare(0, root.size(), root) == 0 &&
         path[root.size()] == '/';
}

// num_virtual_tokens of a prompt / prefix folder's adapter_config.json; 0 otherwise.
int64_t folder_virtual_tokens(const std::string& dir) {
  const auto path = fs::join(dir, "adapter_config.json");
  std::ifstream in(path);
  nlohmann::json j;
  try {
    j = parse_json(in);
  } catch (const JsonTextError& e) {
    throw PoolError(400, path + ": not valid JSON: " + e.what());
  }
  const auto it = j.find("num_virtual_tokens");
  return it != j.end() && it->is_number_integer() ? std::max<int64_t>(0, it->get<int64_t>()) : 0;
}

}  // namespace

void PoolOptions::validate() const {
  check(max_resident >= 1, kModulePoolTag, "max_resident must be >= 1 (got " + std::to_string(max_resident) + ")");
  if (!adapter_dtype.empty()) storage_dtype(adapter_dtype, kModulePoolTag, "adapter_dtype");
  for (const auto& d : adapter_dirs) check(fs::is_dir(d), kModulePoolTag, "adapter dir '" + d + "' is not a folder");
}

ModulePool::ModulePool(Backbone& model, PoolOptions options) : model_(model), options_(std::move(options)) {
  options_.validate();
  for (auto& d : options_.adapter_dirs) d = real_path(d);
}

ModulePool::~ModulePool() {
  if (mixed_) mixed_->remove();
}

void ModulePool::add(const std::string& name, const std::string& dir) {
  if (!valid_name(name))
    throw PoolError(400, "module name '" + name +
                             "' must be 1-128 letters, digits, '_', '-', ':' or '.' (and not '.', '..', __base__)");
  if (!fs::is_file(fs::join(dir, "adapter_config.json")))
    throw PoolError(400, "'" + dir + "' is not a module folder (no adapter_config.json)");
  Entry e;
  e.dir = dir;
  e.virtual_tokens = folder_virtual_tokens(dir);
  std::lock_guard<std::mutex> lk(mu_);
  if (catalogue_.count(name)) throw PoolError(400, "the module name '" + name + "' is already taken");
  catalogue_.emplace(name, std::move(e));
  order_.push_back(name);
}

void ModulePool::add_allowed(const std::string& name, const std::string& path) {
  if (options_.adapter_dirs.empty())
    throw PoolError(400, "loading modules by path is off: start modula serve with --adapter-dir DIR");
  const auto real = real_path(path);
  if (real.empty()) throw PoolError(400, "'" + path + "' does not exist");
  if (std::none_of(options_.adapter_dirs.begin(), options_.adapter_dirs.end(),
                   [&](const std::string& root) { return inside(real, root); }))
    throw PoolError(400, "'" + path + "' is outside the allowed folders (--adapter-dir)");
  add(name, real);
}

void ModulePool::remove(const std::string& name) {
  std::lock_guard<std::mutex> lk(mu_);
  if (!catalogue_.erase(name)) throw PoolError(404, "no module named '" + name + "' is loaded");
  order_.erase(std::remove(order_.begin(), order_.end(), name), order_.end());
}

std::string ModulePool::allowed_dir(const std::string& name) const {
  if (!valid_name(name)) return {};
  for (const auto& root : options_.adapter_dirs) {
    const auto dir = real_path(fs::join(root, name));
    if (inside(dir, root) && fs::is_file(fs::join(dir, "adapter_config.json"))) return dir;
  }
  return {};
}

std::string ModulePool::resolve(const std::string& model) {
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (catalogue_.count(model)) return model;
  }
  if (model.find('(') == std::string::npos) {
    const auto dir = allowed_dir(model);
    if (dir.empty())
      throw PoolError(404, "The model '" + model + "' does not exist (GET /v1/models lists the served models)");
    Entry e;
    e.dir = dir;
    e.virtual_tokens = folder_virtual_tokens(dir);
    std::lock_guard<std::mutex> lk(mu_);
    if (catalogue_.emplace(model, std::move(e)).second) order_.push_back(model);
    return model;
  }
  SpecNode spec;
  try {
    spec = parse_spec(model);
  } catch (const SpecError& e) {
    throw PoolError(400, std::string("the model is not a served name or a valid composition spec: ") + e.what());
  }
  try {
    check_composition_set(spec);
  } catch (const std::invalid_argument& e) {
    throw PoolError(400, e.what());
  }
  Entry e;
  e.spec = spec;
  e.composition = true;
  for (const auto& m : module_names(spec)) {
    const auto member = resolve(m);
    e.virtual_tokens += entry(member).virtual_tokens;
  }
  const auto canonical = to_string(spec);
  std::lock_guard<std::mutex> lk(mu_);
  if (catalogue_.count(canonical)) return canonical;
  size_t compositions = 0;
  for (const auto& kv : catalogue_) compositions += kv.second.composition;
  if (compositions >= kMaxCompositions)  // forget the compositions no row holds (they rebuild from the spec)
    for (auto it = catalogue_.begin(); it != catalogue_.end();)
      it = it->second.composition && !in_model_.count(it->first) ? catalogue_.erase(it) : std::next(it);
  catalogue_.emplace(canonical, std::move(e));
  return canonical;
}

std::vector<std::string> ModulePool::names() const {
  std::lock_guard<std::mutex> lk(mu_);
  return order_;
}

ModulePool::Entry ModulePool::entry(const std::string& set) const {
  std::lock_guard<std::mutex> lk(mu_);
  auto it = catalogue_.find(set);
  if (it == catalogue_.end()) throw PoolError(404, "the module '" + set + "' is not loaded (it was unloaded)");
  return it->second;
}

int64_t ModulePool::virtual_tokens(const std::string& set) const { return entry(set).virtual_tokens; }

Adapter ModulePool::load_set(const std::string& set, int64_t id) {
  const auto e = entry(set);
  if (e.composition) {
    std::map<std::string, std::string> folders;
    for (const auto& m : module_names(e.spec)) folders[m] = entry(m).dir;
    return composition_set(model_, e.spec, folders, set, "c" + std::to_string(id));
  }
  const auto as = "s" + std::to_string(id);  // attach names carry no '.'; the set keeps its routing name
  auto a = load_adapter(model_, e.dir, as);
  for (auto& m : a.modules)
    if (m.attached_as.empty()) m.attached_as = as;
  a.name = set;
  return a;
}

void ModulePool::rebuild(const std::vector<std::string>& sets) {
  if (mixed_) mixed_->remove();
  mixed_.reset();
  resident_.clear();
  resident_count_ = 0;
  std::vector<Adapter> loaded;
  try {
    for (const auto& s : sets) loaded.push_back(load_set(s, next_id_++));
  } catch (...) {
    for (auto& a : loaded) a.remove();
    throw;
  }
  if (!loaded.empty()) mixed_ = std::make_unique<Adapter>(mix_adapters(std::move(loaded), "serve"));
  if (mixed_ && !options_.adapter_dtype.empty())
    store_banks_as(*mixed_, storage_dtype(options_.adapter_dtype, kModulePoolTag, "adapter_dtype"));
  resident_ = sets;
  {
    std::lock_guard<std::mutex> lk(mu_);
    in_model_ = std::set<std::string>(sets.begin(), sets.end());
  }
  resident_count_ = static_cast<int64_t>(sets.size());
  ++loads_;
}

bool ModulePool::acquire(const std::string& set) {
  auto it = std::find(resident_.begin(), resident_.end(), set);
  if (it != resident_.end()) {
    std::rotate(it, it + 1, resident_.end());  // most recently used last
    ++pins_[set];
    return true;
  }
  entry(set);  // 404 when it was unloaded meanwhile
  std::vector<std::string> keep;
  for (const auto& s : resident_) {
    bool catalogued;
    {
      std::lock_guard<std::mutex> lk(mu_);
      catalogued = catalogue_.count(s) > 0;
    }
    if (catalogued || pins_.count(s)) keep.push_back(s);
  }
  while (static_cast<int64_t>(keep.size()) >= options_.max_resident) {
    auto lru = std::find_if(keep.begin(), keep.end(), [&](const std::string& s) { return !pins_.count(s); });
    if (lru == keep.end()) return false;  // all in use: wait for a row to finish
    keep.erase(lru);
    ++evictions_;
  }
  const auto before = keep;
  keep.push_back(set);
  try {
    rebuild(keep);
  } catch (...) {
    try {
      rebuild(before);
    } catch (...) {  // a folder of the old set changed on disk: keep what still loads
      std::vector<std::string> ok;
      for (const auto& s : before) try {
          rebuild({s});
          ok.push_back(s);
        } catch (...) {
        }
      rebuild(ok);
    }
    throw;
  }
  ++pins_[set];
  return true;
}

void ModulePool::release(const std::string& set) {
  auto it = pins_.find(set);
  if (it != pins_.end() && --it->second <= 0) pins_.erase(it);
}

PoolStats ModulePool::stats() const { return {resident_count_.load(), loads_.load(), evictions_.load()}; }

}  // namespace modula::serve
