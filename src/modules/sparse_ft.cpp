// Sparse fine-tuning: parameter selection, SparseDiff (θ = θ₀ + φ with a fixed mask) and
// composition (Ansell et al. 2022). The folder format: sparse_ft_io.cpp; LT-SFT, the
// training procedure: src/train/lt_sft.cpp.
#include "modula/modules/sparse_ft.h"

#include <algorithm>
#include <cmath>
#include <memory>
#include <mutex>
#include <random>
#include <set>
#include <unordered_set>

#include "modula/backbone/layers.h"
#include "modula/io/peft.h"
#include "modula/util/error.h"
#include "modula/util/fs.h"
#include "modula/util/strings.h"
#include "modules/target_regex.h"

namespace modula {
namespace {

using json = nlohmann::json;

constexpr std::string_view kSparseFtTag = "sparse_ft";

bool starts_with(const std::string& s, const std::string& prefix) { return s.compare(0, prefix.size(), prefix) == 0; }

std::string shape_str(const std::vector<int64_t>& shape) { return c10::str(c10::IntArrayRef(shape)); }

int64_t numel_of(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (auto d : shape) n *= d;
  return n;
}

struct Matcher {
  std::string pattern;
  bool is_regex = false;
  std::shared_ptr<TargetRegex> re;
  bool match(const std::string& name) const {
    if (is_regex) return re->full_match(name);
    return name == pattern || ends_with(name, "." + pattern);
  }
};

std::vector<Matcher> compile(const std::vector<std::string>& patterns, const std::string& tag,
                             const std::string& field) {
  std::vector<Matcher> out;
  for (const auto& p : patterns) {
    Matcher m;
    m.pattern = p;
    if (p.empty()) throw std::invalid_argument(tag + " " + field + " has an empty pattern");
    if (starts_with(p, "re:")) {
      m.is_regex = true;
      try {
        m.re = std::make_shared<TargetRegex>(p.substr(3), field);
      } catch (const std::invalid_argument& e) {
        throw std::invalid_argument(tag + " " + field + " pattern '" + p + "' is not a valid regex: " + e.what());
      }
    }
    out.push_back(std::move(m));
  }
  return out;
}

// Parameters claimed by an attached diff (one attached diff per parameter).
std::mutex& claims_mutex() {
  static std::mutex m;
  return m;
}
std::set<const void*>& claims() {
  static std::set<const void*> s;
  return s;
}

torch::Tensor find_param(torch::OrderedDict<std::string, torch::Tensor>& params, const Backbone& model,
                         const std::string& name, const std::vector<int64_t>& shape) {
  auto* p = params.find(name);
  if (!p || is_module_param(name))
    throw_error(kSparseFtTag, "parameter '" + name + "' is not in the " + model.config().model_type + " model");
  if (p->sizes().vec() != shape)
    throw_error(kSparseFtTag, "parameter '" + name + "' has shape " + c10::str(p->sizes()) +
                                  ", the diff was made for " + shape_str(shape));
  return *p;
}

// Sorts indices (values along) and sums the values of repeated indices.
std::pair<torch::Tensor, torch::Tensor> coalesce(const torch::Tensor& indices, const torch::Tensor& values) {
  auto sorted = indices.sort();
  auto v = values.index_select(0, std::get<1>(sorted));
  auto uniq = torch::unique_consecutive(std::get<0>(sorted), /*return_inverse=*/true);
  auto u = std::get<0>(uniq);
  return {u, torch::zeros({u.size(0)}, v.options()).index_add_(0, std::get<1>(uniq), v)};
}

struct Chosen {
  std::string name;
  std::vector<int64_t> shape;
};

// Splits sorted flat indices over the concatenation of `params` into per-parameter entries
// of `diff`; `values_of(i, local)` gives the values of parameter i at local indices.
template <typename ValuesOf>
void add_split(SparseDiffImpl& diff, const std::vector<Chosen>& params, const torch::Tensor& global_sorted,
               torch::Device device, ValuesOf values_of) {
  auto g = global_sorted.to(torch::kCPU).contiguous();
  const int64_t* data = g.data_ptr<int64_t>();
  const int64_t n = g.numel();
  int64_t offset = 0;
  for (size_t i = 0; i < params.size(); ++i) {
    const int64_t size = numel_of(params[i].shape);
    const int64_t lo = std::lower_bound(data, data + n, offset) - data;
    const int64_t hi = std::lower_bound(data, data + n, offset + size) - data;
    offset += size;
    if (hi == lo) continue;
    auto local = (g.slice(0, lo, hi) - (offset - size)).to(device);
    diff.add(params[i].name, params[i].shape, local, values_of(i, local));
  }
}

}  // namespace

// ---------------------------------------------------------------- selection

bool matches_parameter(const std::string& pattern, const std::string& name) {
  return compile({pattern}, "[sparse_ft]", "pattern").front().match(name);
}

std::vector<std::pair<std::string, torch::Tensor>> select_parameters(Backbone& model,
                                                                     const std::vector<std::string>& targets,
                                                                     const std::vector<std::string>& exclude,
                                                                     const std::string& tag) {
  if (targets.empty()) throw std::invalid_argument(tag + " target_parameters is empty");
  const auto want = compile(targets, tag, "target_parameters");
  const auto skip = compile(exclude, tag, "exclude_parameters");
  std::vector<bool> used(want.size(), false);
  std::vector<std::pair<std::string, torch::Tensor>> chosen;
  std::vector<std::string> names;
  for (const auto& p : model.named_parameters()) {
    if (is_module_param(p.key())) continue;
    names.push_back(p.key());
    bool hit = false;
    for (size_t i = 0; i < want.size(); ++i)
      if (want[i].match(p.key())) hit = used[i] = true;
    if (!hit || std::any_of(skip.begin(), skip.end(), [&](const Matcher& m) { return m.match(p.key()); })) continue;
    chosen.emplace_back(p.key(), p.value());
  }
  auto examples = [&] {
    std::string s;
    for (size_t i = 0; i < names.size() && i < 4; ++i) s += (i ? ", " : "") + names[i];
    return s + (names.size() > 4 ? ", ..." : "");
  };
  for (size_t i = 0; i < want.size(); ++i)
    if (!used[i])
      throw std::invalid_argument(tag + " target_parameters pattern '" + want[i].pattern +
                                  "' matches no parameter of the " + model.config().model_type +
                                  " model (names look like " + examples() + ")");
  if (chosen.empty()) throw std::invalid_argument(tag + " exclude_parameters leave no target parameter");
  return chosen;
}

// ---------------------------------------------------------------- options

void SparseDiffOptions::validate() const {
  if (target_parameters_.empty())
    throw_error(kSparseFtTag, "target_parameters must name at least one parameter pattern");
  compile(target_parameters_, "[sparse_ft]", "target_parameters");
  compile(exclude_parameters_, "[sparse_ft]", "exclude_parameters");
  if (k_ < 0) throw_error(kSparseFtTag, "k must be >= 0 (0 = use density), got " + std::to_string(k_));
  if (k_ == 0 && !(density_ > 0.0 && density_ <= 1.0))
    throw_error(kSparseFtTag, "density must be in (0, 1], got " + c10::str(density_));
}

int64_t SparseDiffOptions::num_entries(int64_t total) const {
  const int64_t K = k_ > 0 ? k_ : std::max<int64_t>(1, std::llround(density_ * static_cast<double>(total)));
  if (K > total)
    throw_error(kSparseFtTag, "k = " + std::to_string(K) + " exceeds the " + std::to_string(total) + " chosen entries");
  return K;
}

// ---------------------------------------------------------------- SparseDiff

SparseDiffImpl::SparseDiffImpl(SparseDiffOptions options_) : options(std::move(options_)) {}

SparseDiffImpl::~SparseDiffImpl() {
  try {
    detach();
  } catch (...) {  // a destructor must not throw; detach() only fails on a broken tensor
  }
}

void SparseDiffImpl::add(const std::string& name, std::vector<int64_t> shape, torch::Tensor indices,
                         torch::Tensor values) {
  if (attached()) throw std::logic_error("[sparse_ft] add() while attached: detach() first");
  if (name.empty() || name.front() == '.' || name.back() == '.' || name.find("..") != std::string::npos)
    throw_error(kSparseFtTag, "invalid parameter name '" + name + "'");
  if (contains(name)) throw_error(kSparseFtTag, "parameter '" + name + "' added twice");
  if (!indices.defined() || indices.dim() != 1)
    throw_error(kSparseFtTag, "indices of '" + name + "' must be a 1-D tensor");
  if (indices.is_floating_point() || indices.scalar_type() == torch::kBool)
    throw_error(kSparseFtTag, "indices of '" + name + "' must be integers");
  auto idx = indices.detach().to(torch::kInt64);
  auto val = values.defined() ? values.detach().to(idx.device(), torch::kFloat32)
                              : torch::zeros({idx.numel()}, idx.options().dtype(torch::kFloat32));
  if (val.dim() != 1 || val.numel() != idx.numel())
    throw_error(kSparseFtTag, "values of '" + name + "' have shape " + c10::str(val.sizes()) + ", expected [" +
                                  std::to_string(idx.numel()) + "]");
  const int64_t n = numel_of(shape);
  if (idx.numel() > 0 && (idx.min().item<int64_t>() < 0 || idx.max().item<int64_t>() >= n))
    throw_error(kSparseFtTag,
                "indices of '" + name + "' out of range [0, " + std::to_string(n) + ") for shape " + shape_str(shape));
  auto sorted = idx.sort();
  idx = std::get<0>(sorted).contiguous();
  val = val.index_select(0, std::get<1>(sorted)).contiguous();
  if (idx.numel() > 1 && !(idx.slice(0, 1) > idx.slice(0, 0, -1)).all().item<bool>())
    throw_error(kSparseFtTag, "indices of '" + name + "' repeat an entry");
  auto holder = register_at(*this, name, std::make_shared<torch::nn::Module>());
  Entry e;
  e.name = name;
  e.shape = std::move(shape);
  e.indices = holder->register_buffer("sft_indices", idx);
  e.values = holder->register_parameter("sft_values", val);
  entries_.push_back(std::move(e));
}

std::vector<std::string> SparseDiffImpl::names() const {
  std::vector<std::string> out;
  for (const auto& e : entries_) out.push_back(e.name);
  return out;
}

bool SparseDiffImpl::contains(const std::string& name) const {
  return std::any_of(entries_.begin(), entries_.end(), [&](const Entry& e) { return e.name == name; });
}

const SparseDiffImpl::Entry& SparseDiffImpl::entry(const std::string& name) const {
  for (const auto& e : entries_)
    if (e.name == name) return e;
  throw_error(kSparseFtTag, "the diff has no parameter '" + name + "'");
}

torch::Tensor SparseDiffImpl::indices(const std::string& name) const { return entry(name).indices; }
torch::Tensor SparseDiffImpl::values(const std::string& name) const { return entry(name).values; }
const std::vector<int64_t>& SparseDiffImpl::shape(const std::string& name) const { return entry(name).shape; }

torch::Tensor SparseDiffImpl::dense(const std::string& name) const {
  const auto& e = entry(name);
  auto out = torch::zeros(e.shape, e.values.options());
  return out.put_(e.indices, e.values);
}

int64_t SparseDiffImpl::num_trainable() const {
  int64_t n = 0;
  for (const auto& e : entries_) n += e.values.numel();
  return n;
}

int64_t SparseDiffImpl::num_chosen() const {
  int64_t n = 0;
  for (const auto& e : entries_) n += numel_of(e.shape);
  return n;
}

void SparseDiffImpl::add_scaled(Backbone& model, double scale) {
  if (attached()) throw std::logic_error("[sparse_ft] apply()/remove() while attached: detach() first");
  auto params = model.named_parameters();
  std::vector<torch::Tensor> targets;
  for (const auto& e : entries_) targets.push_back(find_param(params, model, e.name, e.shape));  // check all first
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < entries_.size(); ++i) {
    auto& p = targets[i];
    const auto& e = entries_[i];
    p.put_(e.indices.to(p.device()), (e.values * scale).to(p.options()), /*accumulate=*/true);
  }
}

void SparseDiffImpl::apply(Backbone& model, double scale) { add_scaled(model, scale); }
void SparseDiffImpl::remove(Backbone& model, double scale) { add_scaled(model, -scale); }

void SparseDiffImpl::merge(Backbone& model) {
  if (model_ == &model) detach();
  add_scaled(model, 1.0);
}

void SparseDiffImpl::attach(Backbone& model) {
  if (attached()) throw std::logic_error("[sparse_ft] attach(): the diff is already attached");
  auto params = model.named_parameters();
  std::vector<Attached> list;
  for (const auto& e : entries_) {
    auto p = find_param(params, model, e.name, e.shape);
    if (!p.is_leaf()) throw std::logic_error("[sparse_ft] attach(): parameter '" + e.name + "' is not a leaf tensor");
    list.push_back({&e, p, torch::Tensor(), p.requires_grad()});
  }
  {
    std::lock_guard<std::mutex> lock(claims_mutex());
    for (const auto& a : list)
      if (claims().count(a.param.unsafeGetTensorImpl()))
        throw std::logic_error("[sparse_ft] attach(): parameter '" + a.entry->name + "' already has an attached diff");
    for (const auto& a : list) claims().insert(a.param.unsafeGetTensorImpl());
  }
  torch::NoGradGuard no_grad;
  for (auto& a : list) {
    a.base = a.param.take(a.entry->indices.to(a.param.device())).clone();
    a.param.set_requires_grad(false);  // frozen: autograd forbids in-place writes to leaves that require grad
  }
  attached_ = std::move(list);
  model_ = &model;
  torch::AutoGradMode grad(true);
  refresh();
}

void SparseDiffImpl::refresh() {
  if (!attached()) throw std::logic_error("[sparse_ft] refresh() needs attach(model) first");
  for (auto& a : attached_) {
    a.param.detach_();  // drop the previous step's graph, back to a frozen leaf
    auto idx = a.entry->indices.to(a.param.device());
    // θ[idx] = θ₀[idx] + φ: under grad mode the parameter becomes a non-leaf with grad to values only.
    a.param.put_(idx, a.base + a.entry->values.to(a.base.scalar_type()));
  }
}

void SparseDiffImpl::detach() {
  if (!attached()) return;
  {
    torch::NoGradGuard no_grad;
    for (auto& a : attached_) {
      a.param.detach_();
      a.param.put_(a.entry->indices.to(a.param.device()), a.base);
      a.param.set_requires_grad(a.requires_grad);
    }
  }
  std::lock_guard<std::mutex> lock(claims_mutex());
  for (const auto& a : attached_) claims().erase(a.param.unsafeGetTensorImpl());
  attached_.clear();
  model_ = nullptr;
}

BackboneOutput SparseDiffImpl::forward(Backbone& model, const BackboneInput& in) {
  if (model_ != &model)
    throw std::logic_error("[sparse_ft] forward() needs attach(model) first (apply() for inference)");
  refresh();
  return model.forward(in);
}

// ---------------------------------------------------------------- composition

SparseDiff compose(const std::vector<SparseDiff>& diffs, const std::vector<double>& scales) {
  if (diffs.empty()) throw_error(kSparseFtTag, "compose() needs at least one diff");
  if (!scales.empty() && scales.size() != diffs.size())
    throw_error(kSparseFtTag, "compose(): " + std::to_string(scales.size()) + " scales for " +
                                  std::to_string(diffs.size()) + " diffs");
  SparseDiffOptions o;
  std::vector<std::string> order;
  std::map<std::string, std::vector<int64_t>> shapes;
  std::map<std::string, std::vector<torch::Tensor>> idx, val;
  auto add_unique = [](std::vector<std::string>& list, const std::vector<std::string>& more) {
    for (const auto& s : more)
      if (std::find(list.begin(), list.end(), s) == list.end()) list.push_back(s);
  };
  for (size_t i = 0; i < diffs.size(); ++i) {
    const auto& d = diffs[i];
    if (!d) throw_error(kSparseFtTag, "compose(): diff " + std::to_string(i) + " is empty");
    add_unique(o.target_parameters(), d->options.target_parameters());
    add_unique(o.exclude_parameters(), d->options.exclude_parameters());
    if (o.base_model_name_or_path().empty()) o.base_model_name_or_path(d->options.base_model_name_or_path());
    const double s = scales.empty() ? 1.0 : scales[i];
    for (const auto& name : d->names()) {
      if (!shapes.count(name)) order.push_back(name), shapes[name] = d->shape(name);
      if (shapes[name] != d->shape(name))
        throw_error(kSparseFtTag, "compose(): parameter '" + name + "' has shape " + shape_str(d->shape(name)) +
                                      " in diff " + std::to_string(i) + " but " + shape_str(shapes[name]) + " before");
      idx[name].push_back(d->indices(name).to(torch::kCPU));
      val[name].push_back(d->values(name).detach().to(torch::kCPU) * s);
    }
  }
  SparseDiff out(o);
  for (const auto& name : order) {
    auto merged = coalesce(torch::cat(idx[name]), torch::cat(val[name]));
    out->add(name, shapes[name], merged.first, merged.second);
  }
  auto device = diffs.front()->names().empty() ? torch::Device(torch::kCPU)
                                               : diffs.front()->indices(diffs.front()->names().front()).device();
  out->to(device);
  out->options.k(out->num_trainable());
  out->options.density(static_cast<double>(out->num_trainable()) /
                       static_cast<double>(std::max<int64_t>(1, out->num_chosen())));
  return out;
}

void apply_all(Backbone& model, const std::vector<SparseDiff>& diffs) {
  for (const auto& d : diffs) d.ptr()->apply(model);
}

void remove_all(Backbone& model, const std::vector<SparseDiff>& diffs) {
  for (auto it = diffs.rbegin(); it != diffs.rend(); ++it) it->ptr()->remove(model);
}

// ---------------------------------------------------------------- masks

SparseDiff random_sparse_diff(Backbone& model, const SparseDiffOptions& options, uint64_t seed) {
  options.validate();
  auto params = select_parameters(model, options.target_parameters(), options.exclude_parameters());
  std::vector<Chosen> chosen;
  int64_t total = 0;
  for (const auto& [name, p] : params) chosen.push_back({name, p.sizes().vec()}), total += p.numel();
  const int64_t K = options.num_entries(total);
  // Floyd's algorithm: K distinct draws from [0, total) in O(K).
  std::mt19937_64 rng(seed);
  std::unordered_set<int64_t> picked;
  for (int64_t j = total - K; j < total; ++j) {
    const int64_t t = std::uniform_int_distribution<int64_t>(0, j)(rng);
    picked.insert(picked.count(t) ? j : t);
  }
  std::vector<int64_t> flat(picked.begin(), picked.end());
  std::sort(flat.begin(), flat.end());
  SparseDiff diff(options);
  const auto device = params.front().second.device();
  add_split(*diff, chosen, torch::tensor(flat, torch::kInt64), device,
            [](size_t, const torch::Tensor&) { return torch::Tensor(); });
  return diff;
}

SparseDiff sparse_diff_from_delta(const std::vector<std::pair<std::string, torch::Tensor>>& deltas,
                                  const SparseDiffOptions& options, bool keep_values) {
  if (deltas.empty()) throw_error(kSparseFtTag, "sparse_diff_from_delta() needs at least one parameter");
  SparseDiffOptions o = options;
  if (o.target_parameters().empty())
    for (const auto& d : deltas) o.target_parameters().push_back(d.first);
  o.validate();
  std::vector<Chosen> chosen;
  std::vector<torch::Tensor> flat;
  for (const auto& [name, d] : deltas) {
    chosen.push_back({name, d.sizes().vec()});
    flat.push_back(d.detach().reshape(-1).to(torch::kFloat32).abs());
  }
  auto all = torch::cat(flat);
  const int64_t K = o.num_entries(all.numel());
  // LT-SFT keeps the K entries that moved most in phase 1 (Ansell et al. 2022, §3).
  auto top = std::get<1>(all.topk(K, 0, /*largest=*/true, /*sorted=*/false)).sort();
  SparseDiff diff(o);
  add_split(*diff, chosen, std::get<0>(top), deltas.front().second.device(), [&](size_t i, const torch::Tensor& local) {
    return keep_values ? deltas[i].second.detach().reshape(-1).take(local).to(torch::kFloat32) : torch::Tensor();
  });
  return diff;
}

}  // namespace modula
