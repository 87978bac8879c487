// PEFT add_weighted_adapter: merge LoRA adapters into a new one, site by site, with the
// M inputs stacked so each rule runs as one batched kernel.
#include "modula/merge/lora_merge.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <set>

#include "modula/merge/task_vectors.h"
#include "modula/modules/lora.h"
#include "modula/modules/targets.h"
#include "modula/util/error.h"
#include "modula/util/strings.h"

namespace modula {
namespace {

using json = nlohmann::json;

constexpr std::string_view kLoraMergeTag = "lora_merge";

bool contains(const std::vector<std::string>& v, const std::string& s) {
  return std::find(v.begin(), v.end(), s) != v.end();
}
bool is_svd(const std::string& type) { return ends_with(type, "svd"); }
// "ties_svd" -> "ties", "svd" -> "linear": the rule applied before the factorisation.
std::string base_rule(const std::string& type) {
  if (type == "svd") return "linear";
  return is_svd(type) ? type.substr(0, type.size() - 4) : type;
}
bool needs_density(const std::string& type) { return base_rule(type) != "linear" && type != "cat"; }

// The rule of one combination type over stacked task tensors [M, ...] with weights [M].
torch::Tensor combine(const std::string& rule, const torch::Tensor& stacked, const torch::Tensor& w,
                      const LoraMergeOptions& o, at::Generator& gen) {
  auto sign = sign_method_from_string(o.majority_sign_method());
  double density = o.density().value_or(1.0);
  if (rule == "linear") return weighted_sum(stacked, w);  // task arithmetic: Σ w_i τ_i
  if (rule == "magnitude_prune") return weighted_sum(magnitude_prune(stacked, density), w);
  if (rule == "dare_linear") return weighted_sum(random_prune(stacked, density, true, gen), w);
  // TIES (PEFT order): trim, elect on the unweighted tensors, disjoint mean of the weighted ones.
  auto kept = rule == "ties" ? magnitude_prune(stacked, density) : random_prune(stacked, density, true, gen);
  auto mask = majority_sign_mask(kept, sign);
  return disjoint_merge(kept * broadcast_weights(w, kept), mask);
}

// PEFT's union of the inputs' target_modules, written in the simplest form that selects
// exactly the union: one shared value as it is ("all-linear" included), lists as a set,
// regexes as "(a)|(b)". Other mixes ("all-linear" with a list or a regex, lists with
// regexes) and inputs whose exclude_modules / layers_to_transform differ become the list of
// the sites the inputs hold (full paths, which PEFT matches exactly), filters cleared.
void unite_targets(Backbone& model, const std::vector<Adapter>& adapters, json& config) {
  const char* filters[] = {"exclude_modules", "layers_to_transform", "layers_pattern"};
  auto filter_of = [&](const Adapter& a) {
    json f = json::object();
    for (const char* k : filters) f[k] = a.config.value(k, json());
    return f;
  };
  std::vector<json> targets;
  bool same_filters = true, all_lists = true, all_regex = true;
  for (const auto& a : adapters) {
    auto t = a.config.value("target_modules", json());
    if (!(t.is_string() || t.is_array()))
      throw_error(kLoraMergeTag,
                  "adapter '" + a.name + "': target_modules " + t.dump() + " is neither a string nor a list");
    all_lists = all_lists && t.is_array();
    all_regex = all_regex && t.is_string() && t.get<std::string>() != "all-linear";
    same_filters = same_filters && filter_of(a) == filter_of(adapters[0]);
    targets.push_back(std::move(t));
  }
  const bool all_same = std::all_of(targets.begin(), targets.end(), [&](const json& t) { return t == targets[0]; });
  if (same_filters && all_same) {
    config["target_modules"] = targets[0];
  } else if (same_filters && all_lists) {
    std::set<std::string> names;
    for (const auto& t : targets)
      for (const auto& n : t) names.insert(n.get<std::string>());
    config["target_modules"] = std::vector<std::string>(names.begin(), names.end());
  } else if (same_filters && all_regex) {
    std::string regex;
    std::set<std::string> seen;
    for (const auto& t : targets)
      if (seen.insert(t.get<std::string>()).second) regex += (regex.empty() ? "(" : "|(") + t.get<std::string>() + ")";
    config["target_modules"] = regex;
  } else {
    std::set<std::string> held;
    for (const auto& a : adapters)
      for (const auto& m : a.modules) held.insert(m.site);
    json sites = json::array();
    for (const auto& [path, layer] : linear_sites(model))
      if (held.erase(path)) sites.push_back(path);
    if (!held.empty())
      throw_error(kLoraMergeTag, "site " + *held.begin() + " of an input adapter is not a Linear site");
    config["target_modules"] = sites;
    for (const char* k : filters) config[k] = nullptr;
  }
}

struct Source {
  LoraImpl* lora;
  double weight;
  double scaling;  // s_i: alpha/r (rsLoRA alpha/√r) times the adapter's set_scale
};

// B = U_r S_r, A = V_rᵀ of ΔW [out, in]; zero-padded when rank > min(out, in).
std::pair<torch::Tensor, torch::Tensor> factorise(const torch::Tensor& delta, int64_t rank,
                                                  const std::optional<double>& clamp) {
  auto usv = torch::linalg_svd(delta, /*full_matrices=*/false);
  int64_t k = std::min<int64_t>(rank, std::get<1>(usv).size(0));
  auto B = std::get<0>(usv).narrow(1, 0, k) * std::get<1>(usv).narrow(0, 0, k);  // U diag(S)
  auto A = std::get<2>(usv).narrow(0, 0, k);
  if (clamp) {  // PEFT: clamp both factors to ±quantile(|[U S, Vᵀ]| entries, clamp)
    auto hi = torch::quantile(torch::cat({B.flatten(), A.flatten()}), *clamp).item<double>();
    B = B.clamp(-hi, hi);
    A = A.clamp(-hi, hi);
  }
  if (k < rank) {
    B = torch::cat({B, torch::zeros({B.size(0), rank - k}, B.options())}, 1);
    A = torch::cat({A, torch::zeros({rank - k, A.size(1)}, A.options())}, 0);
  }
  return {B, A};
}

}  // namespace

std::vector<std::string> lora_combination_types() {
  return {"svd",
          "linear",
          "cat",
          "ties",
          "ties_svd",
          "dare_ties",
          "dare_linear",
          "dare_ties_svd",
          "dare_linear_svd",
          "magnitude_prune",
          "magnitude_prune_svd"};
}

void LoraMergeOptions::validate(size_t n) const {
  if (n == 0) throw_error(kLoraMergeTag, "no adapters to merge");
  if (weights().size() != n)
    throw_error(kLoraMergeTag,
                "weights has " + std::to_string(weights().size()) + " entries for " + std::to_string(n) + " adapters");
  for (double w : weights())
    if (!std::isfinite(w)) throw_error(kLoraMergeTag, "weights must be finite");
  auto types = lora_combination_types();
  if (!contains(types, combination_type())) {
    std::string known;
    for (const auto& t : types) known += (known.empty() ? "" : ", ") + t;
    throw_error(kLoraMergeTag, "combination_type '" + combination_type() + "' is not known (" + known + ")");
  }
  if (needs_density(combination_type()) && n > 1) {
    if (!density()) throw_error(kLoraMergeTag, "combination_type '" + combination_type() + "' needs density");
    if (!(*density() >= 0 && *density() <= 1))
      throw_error(kLoraMergeTag, "density must be in [0, 1], got " + std::to_string(*density()));
  }
  sign_method_from_string(majority_sign_method());  // throws naming the value
  if (majority_sign_method() != "total" && majority_sign_method() != "frequency")
    throw_error(kLoraMergeTag, "majority_sign_method '" + majority_sign_method() + "' is not known (total, frequency)");
  if (svd_rank() < 0) throw_error(kLoraMergeTag, "svd_rank must be >= 0 (0: the largest input rank)");
  if (svd_clamp() && !(*svd_clamp() > 0 && *svd_clamp() <= 1))
    throw_error(kLoraMergeTag, "svd_clamp must be in (0, 1]");
}

Adapter merge_lora_adapters(Backbone& model, const std::vector<Adapter>& adapters, const LoraMergeOptions& o,
                            const std::string& name) {
  o.validate(adapters.size());
  const std::string type = adapters.size() == 1 ? "linear" : o.combination_type();
  std::vector<std::map<std::string, LoraImpl*>> by_site(adapters.size());
  std::vector<int64_t> ranks;
  for (size_t i = 0; i < adapters.size(); ++i) {
    const auto& a = adapters[i];
    if (a.name == name) throw_error(kLoraMergeTag, "the merged adapter's name '" + name + "' is already an input's");
    if (a.peft_type != "LORA")
      throw_error(kLoraMergeTag, "adapter '" + a.name + "' is " + a.peft_type + "; only LORA adapters merge");
    if (a.config.value("use_dora", false))
      throw_error(kLoraMergeTag, "adapter '" + a.name + "' uses DoRA; DoRA magnitudes do not merge");
    ranks.push_back(a.config.value("r", int64_t{8}));
    for (const auto& m : a.modules) {
      auto lora = std::dynamic_pointer_cast<LoraImpl>(m.module);
      if (!lora) throw_error(kLoraMergeTag, "adapter '" + a.name + "' has a non-LoRA module at " + m.site);
      by_site[i][m.site] = lora.get();
    }
  }
  int64_t rank = ranks[0];
  if (type == "cat") {
    rank = 0;
    for (auto r : ranks) rank += r;  // Σ r_i
  } else if (is_svd(type)) {
    rank = o.svd_rank() > 0 ? o.svd_rank() : *std::max_element(ranks.begin(), ranks.end());
  } else {
    for (size_t i = 0; i < ranks.size(); ++i)
      if (ranks[i] != ranks[0])
        throw_error(kLoraMergeTag, "combination_type '" + type + "' needs equal ranks: adapter '" + adapters[i].name +
                                       "' has r=" + std::to_string(ranks[i]) + ", adapter '" + adapters[0].name +
                                       "' r=" + std::to_string(ranks[0]) + " (use cat or svd)");
  }

  json config = adapters[0].config;  // PEFT: replace(config of the first, r, lora_alpha, target_modules)
  config["r"] = rank;
  config["lora_alpha"] = rank;
  unite_targets(model, adapters, config);
  config["rank_pattern"] = json::object();
  config["alpha_pattern"] = json::object();
  config["use_dora"] = false;
  Adapter merged = lora_adapter(model, config, name);

  auto gen = seeded_generator(o.seed());
  torch::NoGradGuard no_grad;
  try {
    for (auto& m : merged.modules) {
      auto target = std::dynamic_pointer_cast<LoraImpl>(m.module);
      std::vector<Source> sources;
      for (size_t i = 0; i < adapters.size(); ++i) {
        auto it = by_site[i].find(m.site);
        if (it == by_site[i].end()) continue;
        sources.push_back({it->second, o.weights()[i], it->second->scale * it->second->options.scaling()});
      }
      if (sources.empty()) throw_error(kLoraMergeTag, "site " + m.site + ": no input adapter has a LoRA module there");
      auto f32 = [&](const torch::Tensor& t) { return t.detach().to(target->lora_A.device(), torch::kFloat32); };
      torch::Tensor A, B;
      if (type == "cat") {
        // Exact: [B_1 ... B_M] [w_1 s_1 A_1; ...] = Σ w_i s_i B_i A_i.
        std::vector<torch::Tensor> as, bs;
        for (const auto& s : sources) {
          as.push_back(f32(s.lora->lora_A) * (s.weight * s.scaling));
          bs.push_back(f32(s.lora->lora_B));
        }
        auto a = torch::cat(as, 0), b = torch::cat(bs, 1);
        if (a.size(0) > rank)
          throw_error(kLoraMergeTag, "site " + m.site + ": the inputs' ranks sum to " + std::to_string(a.size(0)) +
                                         " there, more than the merged rank " + std::to_string(rank));
        A = torch::zeros_like(f32(target->lora_A));
        B = torch::zeros_like(f32(target->lora_B));
        A.narrow(0, 0, a.size(0)).copy_(a);
        B.narrow(1, 0, b.size(1)).copy_(b);
      } else if (is_svd(type)) {
        std::vector<torch::Tensor> deltas;
        std::vector<double> w;
        for (const auto& s : sources) {
          deltas.push_back(f32(s.lora->delta_weight()));  // s_i B_i A_i [out, in]
          w.push_back(s.weight);
        }
        auto delta = combine(base_rule(type), torch::stack(deltas), torch::tensor(w, torch::kFloat64), o, gen);
        std::tie(B, A) = factorise(delta, rank, o.svd_clamp());
      } else {
        std::vector<torch::Tensor> as, bs;
        std::vector<double> w;
        for (size_t j = 0; j < sources.size(); ++j) {
          const auto& s = sources[j];
          if (s.weight * s.scaling < 0)
            throw_error(kLoraMergeTag,
                        "combination_type '" + type + "' scales A and B by sqrt(weight * scaling); weight " +
                            std::to_string(s.weight) + " at site " + m.site + " is negative (use cat or svd)");
          if (s.lora->lora_A.size(0) != rank)
            throw_error(kLoraMergeTag, "combination_type '" + type + "' needs equal ranks: site " + m.site +
                                           " has rank " + std::to_string(s.lora->lora_A.size(0)) + ", the merge " +
                                           std::to_string(rank));
          as.push_back(f32(s.lora->lora_A));
          bs.push_back(f32(s.lora->lora_B));
          w.push_back(std::sqrt(s.weight * s.scaling));  // √(w_i s_i) on each factor
        }
        auto wt = torch::tensor(w, torch::kFloat64);
        A = combine(type, torch::stack(as), wt, o, gen);
        B = combine(type, torch::stack(bs), wt, o, gen);
      }
      if (A.sizes() != target->lora_A.sizes() || B.sizes() != target->lora_B.sizes())
        throw_error(kLoraMergeTag, "site " + m.site + ": merged factors " + c10::str(B.sizes()) + " x " +
                                       c10::str(A.sizes()) + " do not fit the new module " +
                                       c10::str(target->lora_B.sizes()) + " x " + c10::str(target->lora_A.sizes()));
      target->lora_A.copy_(A);
      target->lora_B.copy_(B);
    }
  } catch (...) {
    remove_adapter(merged);
    throw;
  }
  return merged;
}

}  // namespace modula
