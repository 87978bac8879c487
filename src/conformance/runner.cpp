// Case kinds and their checks. Kinds that later subsystems implement SKIP until then.
// A new kind is one function (in its own file, declared in cases.h) plus one line in
// case_kinds().
#include <algorithm>
#include <fstream>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "cases.h"
#include "modula/backbone/registry.h"
#include "modula/composition/registry.h"
#include "modula/io/peft.h"
#include "modula/io/safetensors.h"
#include "modula/modules/adapter.h"
#include "modula/text/tokenizer.h"
#include "modula/util/fs.h"

using nlohmann::json;

namespace modula {

json read_json(const std::string& p) {
  std::ifstream in(p);
  if (!in) throw std::runtime_error("[conformance] cannot open " + p);
  try {
    return json::parse(in);
  } catch (const json::parse_error& e) {
    throw std::runtime_error("[conformance] " + p + ": invalid JSON: " + e.what());
  }
}

double compare(const torch::Tensor& got, const torch::Tensor& want, const torch::Tensor& mask,
               const ConformanceOptions& o, bool& ok, const std::string& what) {
  if (got.sizes() != want.sizes())
    throw std::runtime_error("[conformance] " + what + ": shape " + c10::str(got.sizes()) + ", expected " +
                             c10::str(want.sizes()));
  auto a = got.detach().to(torch::kFloat64).cpu(), b = want.to(torch::kFloat64);
  auto keep = torch::ones_like(b, torch::kBool);
  if (mask.defined()) {
    auto m = mask.to(torch::kBool);
    while (m.dim() < b.dim()) m = m.unsqueeze(-1);
    keep = m.expand_as(b);
  }
  auto diff = (a - b).abs().masked_fill(keep.logical_not(), 0);
  auto bound = o.atol + o.rtol * b.abs();
  if ((diff > bound).any().item<bool>()) ok = false;
  if (a.isnan().logical_and(keep).any().item<bool>()) {
    ok = false;
    return std::numeric_limits<double>::infinity();
  }
  return diff.numel() ? diff.max().item<double>() : 0.0;
}

namespace {

CaseResult model_case(const std::string& dir, const json& spec, const ConformanceOptions& o) {
  CaseResult r;
  auto model = load_backbone(dir);
  auto expected = io::SafetensorsFile::open(fs::join(dir, "expected.safetensors"));
  BackboneInput in;
  in.input_ids = expected.get("input_ids").clone();
  in.attention_mask = expected.get("attention_mask").clone();
  if (expected.contains("token_type_ids")) in.token_type_ids = expected.get("token_type_ids").clone();
  torch::NoGradGuard no_grad;
  auto out = model->forward(in);
  bool ok = true;
  double worst = 0;
  if (expected.contains("last_hidden_state"))
    worst = std::max(worst, compare(out.last_hidden_state, expected.get("last_hidden_state"), in.attention_mask, o, ok,
                                    "last_hidden_state"));
  if (expected.contains("logits")) {
    auto want = expected.get("logits");
    auto mask = want.dim() == 3 ? in.attention_mask : torch::Tensor();  // [B,L] heads: every row
    worst = std::max(worst, compare(out.logits, want, mask, o, ok, "logits"));
  }
  r.status = ok ? CaseStatus::Pass : CaseStatus::Fail;
  r.max_abs_diff = worst;
  if (!ok) r.detail = "outside atol/rtol " + std::to_string(o.atol);
  return r;
}

// expected.json {"cases": {name: [{text, ids, decoded}]}}; name.json or name.model beside it.
CaseResult tokenizers_case(const std::string& dir, const json& spec, const ConformanceOptions&) {
  CaseResult r;
  auto expected = read_json(fs::join(dir, "expected.json"));
  if (!expected.contains("cases") || !expected["cases"].is_object())
    throw std::runtime_error("[conformance] " + fs::join(dir, "expected.json") + ": missing object 'cases'");
  int mismatches = 0, probes = 0;
  std::string first_bad;
  for (const auto& [name, probes_json] : expected["cases"].items()) {
    std::string file = fs::join(dir, name + ".json");
    if (!fs::exists(file)) file = fs::join(dir, name + ".model");
    auto tok = text::Tokenizer::from_file(file);
    for (const auto& probe : probes_json) {
      ++probes;
      auto text = probe.at("text").get<std::string>();
      auto want_ids = probe.at("ids").get<std::vector<int64_t>>();
      auto ids = tok->encode(text);
      bool ok = ids == want_ids;
      if (ok && probe.contains("decoded")) ok = tok->decode(want_ids) == probe["decoded"].get<std::string>();
      if (!ok) {
        ++mismatches;
        if (first_bad.empty()) first_bad = name + ": " + json(text).dump();
      }
    }
  }
  r.status = mismatches == 0 ? CaseStatus::Pass : CaseStatus::Fail;
  r.max_abs_diff = mismatches;
  r.detail = mismatches
                 ? std::to_string(mismatches) + "/" + std::to_string(probes) + " probes differ, first " + first_bad
                 : std::to_string(probes) + " probes";
  return r;
}

// PEFT adapter folder beside case.json; base model from "base_model" (relative to the case).
CaseResult adapter_case(const std::string& dir, const json& spec, const ConformanceOptions& o) {
  CaseResult r;
  auto peft_type = io::read_peft_folder(dir).peft_type;
  auto types = supported_peft_types();
  if (std::find(types.begin(), types.end(), peft_type) == types.end()) {
    r.status = CaseStatus::Skip;
    r.detail = "peft_type " + peft_type + " not implemented yet";
    return r;
  }
  auto model = load_backbone(fs::join(dir, spec.at("base_model").get<std::string>()));
  ModuleEnv env;
  env.context = std::make_shared<RoutingContext>();  // POLY: task ids per row
  auto adapter = load_module(*model, dir, env);
  model->eval();
  auto expected = io::SafetensorsFile::open(fs::join(dir, "expected.safetensors"));
  BackboneInput in;
  in.input_ids = expected.get("input_ids").clone();
  in.attention_mask = expected.get("attention_mask").clone();
  if (expected.contains("task_ids")) env.context->set("task", expected.get("task_ids").clone());
  torch::NoGradGuard no_grad;
  auto out = forward_adapted(*model, adapter, in);
  auto want = expected.get("logits");
  auto mask = in.attention_mask;
  if (want.dim() == 3 && want.size(1) > mask.size(1))  // prompt tuning: virtual positions are compared too
    mask = torch::cat({torch::ones({mask.size(0), want.size(1) - mask.size(1)}, mask.options()), mask}, 1);
  bool ok = true;
  r.max_abs_diff = compare(out.logits, want, want.dim() == 3 ? mask : torch::Tensor(), o, ok, "logits");
  r.status = ok ? CaseStatus::Pass : CaseStatus::Fail;
  if (!ok) r.detail = "outside atol/rtol " + std::to_string(o.atol);
  return r;
}

const std::map<std::string, CaseFn>& case_kinds() {
  static const std::map<std::string, CaseFn> kinds = {
      {"model", model_case}, {"tokenizers", tokenizers_case},   {"adapter", adapter_case},
      {"merge", merge_case}, {"mixed-batch", mixed_batch_case},
  };
  return kinds;
}

}  // namespace

CaseResult run_case(const std::string& case_dir, const ConformanceOptions& options) {
  CaseResult r;
  r.path = case_dir;
  try {
    auto spec = read_json(fs::join(case_dir, "case.json"));
    r.kind = spec.value("kind", "");
    auto it = case_kinds().find(r.kind);
    if (it == case_kinds().end()) {
      r.status = CaseStatus::Skip;
      r.detail = "kind '" + r.kind + "' not implemented yet";
      return r;
    }
    auto result = it->second(case_dir, spec, options);
    result.path = r.path;
    result.kind = r.kind;
    return result;
  } catch (const std::exception& e) {
    r.status = CaseStatus::Fail;
    r.detail = e.what();
    return r;
  }
}

std::vector<CaseResult> run_conformance(const std::string& root, const ConformanceOptions& options) {
  if (!fs::is_dir(root)) throw std::runtime_error("[conformance] not a folder: " + root);
  std::vector<std::string> dirs;
  for (const auto& file : fs::find_files(root, "case.json")) dirs.push_back(fs::parent(file));
  std::vector<CaseResult> results;
  for (const auto& d : dirs) results.push_back(run_case(d, options));
  return results;
}

std::string format(const CaseResult& r) {
  static const char* names[] = {"PASS", "FAIL", "SKIP"};
  std::ostringstream s;
  s << names[static_cast<int>(r.status)] << "  " << r.path;
  if (r.status != CaseStatus::Skip) s << "  max_abs_diff=" << r.max_abs_diff;
  if (!r.detail.empty() && r.status != CaseStatus::Pass) s << "  (" << r.detail << ")";
  return s.str();
}

std::string summary(const std::vector<CaseResult>& results) {
  int n[3] = {0, 0, 0};
  for (const auto& r : results) ++n[static_cast<int>(r.status)];
  return std::to_string(n[0]) + " passed, " + std::to_string(n[1]) + " failed, " + std::to_string(n[2]) + " skipped";
}

}  // namespace modula
