// Case kinds and their checks. A new kind is one function (in its own file, declared in
// cases.h) plus one line in case_kinds(). Strict: an unknown or missing kind FAILs, and so
// does a case that compared nothing (see conformance.h).
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
#include "modula/util/error.h"
#include "modula/util/fs.h"
#include "modula/util/json.h"

using nlohmann::json;

namespace modula {

json read_json(const std::string& p) {
  std::ifstream in(p);
  if (!in) throw_error<std::runtime_error>(kConformanceTag, "cannot open " + p);
  try {
    return parse_json(in);
  } catch (const JsonTextError& e) {
    throw_error<std::runtime_error>(kConformanceTag, p + ": invalid JSON: " + e.what());
  }
}

namespace {

CaseResult model_case(const std::string& dir, const json& spec, const ConformanceOptions& o) {
  auto model = load_backbone(dir);
  auto expected = io::SafetensorsFile::open(fs::join(dir, "expected.safetensors"));
  if (!expected.contains("logits") && !expected.contains("last_hidden_state"))
    throw_error<std::runtime_error>(kConformanceTag,
                                    expected.path() + ": holds neither 'logits' nor 'last_hidden_state' to compare");
  BackboneInput in;
  in.input_ids = expected_tensor(expected, "input_ids").clone();
  in.attention_mask = expected_tensor(expected, "attention_mask").clone();
  if (expected.contains("token_type_ids")) in.token_type_ids = expected.get("token_type_ids").clone();
  torch::NoGradGuard no_grad;
  auto out = model->forward(in);
  CaseCheck checks(o);
  if (expected.contains("last_hidden_state"))
    checks.compare(out.last_hidden_state, expected.get("last_hidden_state"), in.attention_mask, "last_hidden_state");
  if (expected.contains("logits")) {
    auto want = expected.get("logits");
    auto mask = want.dim() == 3 ? in.attention_mask : torch::Tensor();  // [B,L] heads: every row
    checks.compare(out.logits, want, mask, "logits");
  }
  return checks.result();
}

// expected.json {"cases": {name: [{text, ids, decoded}]}}; name.json or name.model beside it.
CaseResult tokenizers_case(const std::string& dir, const json& spec, const ConformanceOptions&) {
  CaseResult r;
  const auto path = fs::join(dir, "expected.json");
  auto expected = read_json(path);
  if (!expected.contains("cases") || !expected["cases"].is_object())
    throw_error<std::runtime_error>(kConformanceTag, path + ": missing object 'cases'");
  int mismatches = 0, probes = 0;
  std::string first_bad, unchecked;
  for (const auto& [name, probes_json] : expected["cases"].items()) {
    if (!probes_json.is_array() || probes_json.empty())
      throw_error<std::runtime_error>(kConformanceTag, path + ": cases." + name + " must be a non-empty array");
    std::string file = fs::join(dir, name + ".json");
    if (!fs::exists(file)) file = fs::join(dir, name + ".model");
    if (fs::extension(file) == ".model" && !text::sentencepiece_available()) {
      unchecked += (unchecked.empty() ? "" : ", ") + name;  // an AddressSanitizer build
      continue;
    }
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
  r.status = mismatches == 0 && probes > 0 ? CaseStatus::Pass : CaseStatus::Fail;
  r.max_abs_diff = mismatches;
  r.compared = probes;
  r.detail = mismatches
                 ? std::to_string(mismatches) + "/" + std::to_string(probes) + " probes differ, first " + first_bad
                 : std::to_string(probes) + " probes";
  if (!unchecked.empty()) r.detail += " (" + unchecked + " not checked: SentencePiece cannot load in this build)";
  return r;
}

// PEFT adapter folder beside case.json; base model from "base_model" (relative to the case).
CaseResult adapter_case(const std::string& dir, const json& spec, const ConformanceOptions& o) {
  auto peft_type = io::read_peft_folder(dir).peft_type;
  auto types = supported_peft_types();
  if (std::find(types.begin(), types.end(), peft_type) == types.end())
    throw_error<std::runtime_error>(kConformanceTag, "peft_type " + peft_type + " is not implemented");
  auto model = load_backbone(fs::join(dir, spec.at("base_model").get<std::string>()));
  ModuleEnv env;
  env.context = std::make_shared<RoutingContext>();  // POLY: task ids per row
  auto adapter = load_module(*model, dir, env);
  model->eval();
  auto expected = io::SafetensorsFile::open(fs::join(dir, "expected.safetensors"));
  auto want = expected_tensor(expected, "logits");
  BackboneInput in;
  in.input_ids = expected_tensor(expected, "input_ids").clone();
  in.attention_mask = expected_tensor(expected, "attention_mask").clone();
  if (expected.contains("task_ids")) env.context->set("task", expected.get("task_ids").clone());
  torch::NoGradGuard no_grad;
  auto out = forward_adapted(*model, adapter, in);
  auto mask = in.attention_mask;
  if (want.dim() == 3 && want.size(1) > mask.size(1))  // prompt tuning: virtual positions are compared too
    mask = torch::cat({torch::ones({mask.size(0), want.size(1) - mask.size(1)}, mask.options()), mask}, 1);
  CaseCheck checks(o);
  checks.compare(out.logits, want, want.dim() == 3 ? mask : torch::Tensor(), "logits");
  return checks.result();
}

const std::map<std::string, CaseFn>& case_kinds() {
  static const std::map<std::string, CaseFn> kinds = {
      {"model", model_case}, {"tokenizers", tokenizers_case},   {"adapter", adapter_case},
      {"merge", merge_case}, {"mixed-batch", mixed_batch_case},
  };
  return kinds;
}

std::string runner_known_kinds() {
  std::string s;
  for (const auto& [name, fn] : case_kinds()) s += (s.empty() ? "" : ", ") + name;
  return s;
}

// case.json "atol" / "rtol" (numbers >= 0) replace the runner's tolerance for that case.
ConformanceOptions runner_case_options(const std::string& case_json, const json& spec, const ConformanceOptions& o) {
  ConformanceOptions out = o;
  for (const auto& [key, field] : {std::pair<const char*, double*>{"atol", &out.atol}, {"rtol", &out.rtol}}) {
    if (!spec.contains(key)) continue;
    if (!spec[key].is_number())
      throw_error<std::runtime_error>(kConformanceTag, case_json + ": '" + key + "' must be a number");
    *field = spec[key].get<double>();
  }
  try {
    out.validate();
  } catch (const std::invalid_argument& e) {
    throw_error<std::runtime_error>(kConformanceTag, case_json + ": " + e.what());
  }
  return out;
}

}  // namespace

CaseResult run_case(const std::string& case_dir, const ConformanceOptions& options) {
  CaseResult r;
  r.path = case_dir;
  try {
    const auto case_json = fs::join(case_dir, "case.json");
    auto spec = read_json(case_json);
    if (!spec.is_object()) throw_error<std::runtime_error>(kConformanceTag, case_json + ": not a JSON object");
    if (!spec.contains("kind") || !spec["kind"].is_string())
      throw_error<std::runtime_error>(kConformanceTag,
                                      case_json + ": no string 'kind' (known kinds: " + runner_known_kinds() + ")");
    r.kind = spec["kind"].get<std::string>();
    auto it = case_kinds().find(r.kind);
    if (it == case_kinds().end())
      throw_error<std::runtime_error>(
          kConformanceTag, case_json + ": unknown kind '" + r.kind + "' (known kinds: " + runner_known_kinds() + ")");
    auto result = it->second(case_dir, spec, runner_case_options(case_json, spec, options));
    result.path = r.path;
    result.kind = r.kind;
    if (result.status == CaseStatus::Pass && result.compared == 0) {  // a kind may never pass vacuously
      result.status = CaseStatus::Fail;
      result.detail = "nothing compared";
    }
    return result;
  } catch (const std::exception& e) {
    r.status = CaseStatus::Fail;
    r.detail = e.what();
    return r;
  }
}

std::vector<CaseResult> run_conformance(const std::string& root, const ConformanceOptions& options) {
  options.validate();
  if (!fs::is_dir(root)) throw_error<std::runtime_error>(kConformanceTag, "not a folder: " + root);
  std::vector<std::string> dirs;
  for (const auto& file : fs::find_files(root, "case.json")) dirs.push_back(fs::parent(file));
  if (static_cast<int64_t>(dirs.size()) < options.min_cases)
    throw_error<std::runtime_error>(kConformanceTag, std::to_string(dirs.size()) + " case(s) under " + root +
                                                         ", expected at least " + std::to_string(options.min_cases));
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
