// "merge" cases: PEFT add_weighted_adapter over the parent folder's adapters, compared on
// the merged lora_A / lora_B tensors (svd: on B@A) and on the logits of base + merged.
#include <map>

#include "cases.h"
#include "modula/backbone/registry.h"
#include "modula/composition/registry.h"
#include "modula/io/peft.h"
#include "modula/io/safetensors.h"
#include "modula/merge/lora_merge.h"
#include "modula/modules/lora.h"
#include "modula/util/error.h"
#include "modula/util/fs.h"

using nlohmann::json;

namespace modula {
namespace {

// "merged::base_model.model.<site>.lora_A.<name>.weight" -> {site, "lora_A"}.
std::pair<std::string, std::string> merged_key_site(const std::string& key) {
  std::string k = key.substr(std::string("merged::").size());
  if (k.rfind(io::kPeftPrefix, 0) == 0) k = k.substr(io::kPeftPrefix.size());
  for (const std::string part : {"lora_A", "lora_B"}) {
    auto at = k.find("." + part + ".");
    if (at != std::string::npos) return {k.substr(0, at), part};
  }
  throw_error<std::runtime_error>(kConformanceTag, "expected tensor '" + key + "' names neither lora_A nor lora_B");
}

}  // namespace

CaseResult merge_case(const std::string& dir, const json& spec, const ConformanceOptions& o) {
  const std::string parent = fs::join(dir, "../..");
  auto parent_spec = read_json(fs::join(parent, "case.json"));
  auto model = load_backbone(fs::join(parent, parent_spec.at("base_model").get<std::string>()));
  std::vector<Adapter> inputs;
  for (const auto& n : spec.at("adapters")) {
    auto name = n.get<std::string>();
    inputs.push_back(load_adapter(*model, fs::join(parent, name), name));
  }
  auto type = spec.at("combination_type").get<std::string>();
  auto options = LoraMergeOptions(spec.at("weights").get<std::vector<double>>()).combination_type(type);
  if (spec.contains("density") && !spec["density"].is_null()) options.density(spec["density"].get<double>());
  if (spec.contains("majority_sign_method"))
    options.majority_sign_method(spec["majority_sign_method"].get<std::string>());
  if (spec.contains("svd_rank") && !spec["svd_rank"].is_null()) options.svd_rank(spec["svd_rank"].get<int64_t>());
  auto merged = merge_lora_adapters(*model, inputs, options, "merged_" + type);
  for (auto& a : inputs) a.set_enabled(false);

  auto expected = io::SafetensorsFile::open(fs::join(dir, "expected.safetensors"));
  auto inputs_file = io::SafetensorsFile::open(fs::join(parent, "expected.safetensors"));
  const auto& ids_file = expected.contains("input_ids") ? expected : inputs_file;
  std::map<std::string, LoraImpl*> sites;
  for (auto& m : merged.modules) sites[m.site] = std::dynamic_pointer_cast<LoraImpl>(m.module).get();

  CaseCheck checks(o);
  bool svd = type.size() >= 3 && type.compare(type.size() - 3, 3, "svd") == 0;
  std::map<std::string, std::map<std::string, torch::Tensor>> want_factors;  // site -> lora_A/lora_B
  for (const auto& key : expected.keys()) {
    if (key.rfind("merged::", 0) != 0) continue;
    auto [site, part] = merged_key_site(key);
    auto it = sites.find(site);
    if (it == sites.end())
      throw_error<std::runtime_error>(kConformanceTag, "merged adapter has no module at " + site + " (" + key + ")");
    if (svd) {
      want_factors[site][part] = expected.get(key);
      continue;
    }
    auto got = part == "lora_A" ? it->second->lora_A : it->second->lora_B;
    checks.compare(got, expected.get(key), torch::Tensor(), key);
  }
  for (auto& [site, f] : want_factors) {  // svd factors are unique up to rotation: compare B@A
    if (!f.count("lora_A") || !f.count("lora_B"))
      throw_error<std::runtime_error>(kConformanceTag, site + ": svd case lacks lora_A or lora_B");
    auto* l = sites.at(site);
    checks.compare(torch::matmul(l->lora_B, l->lora_A), torch::matmul(f["lora_B"], f["lora_A"]), torch::Tensor(),
                   site + " B@A");
  }
  const int merged_compared = checks.compared();
  if (merged_compared == 0)
    throw_error<std::runtime_error>(kConformanceTag, expected.path() + ": no merged:: tensors to compare");

  auto want = expected_tensor(expected, "logits");
  BackboneInput in;
  in.input_ids = expected_tensor(ids_file, "input_ids").clone();
  in.attention_mask = expected_tensor(ids_file, "attention_mask").clone();
  torch::NoGradGuard no_grad;
  auto out = forward_adapted(*model, merged, in);
  checks.compare(out.logits, want, want.dim() == 3 ? in.attention_mask : torch::Tensor(), "logits");
  return checks.result(std::to_string(merged_compared) + " merged tensors + logits");
}

}  // namespace modula
