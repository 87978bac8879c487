// Conformance kinds of the composition layer: "mixed-batch" (one LoRA adapter per row)
// and the POLY path of "adapter" (Polytropon routing by task ids).
#include "cases.h"
#include "modula/backbone/registry.h"
#include "modula/composition/mixed.h"
#include "modula/composition/poly_lora.h"
#include "modula/io/safetensors.h"
#include "modula/util/fs.h"

namespace modula {
namespace {

CaseResult compare_logits(const torch::Tensor& got, const io::SafetensorsFile& expected, const torch::Tensor& mask,
                          const ConformanceOptions& o) {
  CaseResult r;
  bool ok = true;
  r.max_abs_diff = compare(got, expected.get("logits"), mask, o, ok, "logits");
  r.status = ok ? CaseStatus::Pass : CaseStatus::Fail;
  if (!ok) r.detail = "outside atol/rtol " + std::to_string(o.atol);
  return r;
}

}  // namespace

// Adapters in sub-folders named by case.json "adapter_per_row"; one batched forward.
CaseResult mixed_batch_case(const std::string& dir, const nlohmann::json& spec, const ConformanceOptions& o) {
  auto model = load_backbone(fs::join(dir, spec.at("base_model").get<std::string>()));
  auto per_row = spec.at("adapter_per_row").get<std::vector<std::string>>();
  std::vector<std::pair<std::string, std::string>> named_dirs;
  for (const auto& name : per_row)
    if (name != kBaseAdapter &&
        std::none_of(named_dirs.begin(), named_dirs.end(), [&](const auto& nd) { return nd.first == name; }))
      named_dirs.emplace_back(name, fs::join(dir, name));
  std::sort(named_dirs.begin(), named_dirs.end());
  auto mixed = load_mixed(*model, named_dirs);
  set_row_modules(mixed, per_row);
  auto expected = io::SafetensorsFile::open(fs::join(dir, "expected.safetensors"));
  BackboneInput in;
  in.input_ids = expected.get("input_ids").clone();
  in.attention_mask = expected.get("attention_mask").clone();
  torch::NoGradGuard no_grad;
  auto out = model->forward(in);
  auto want = expected.get("logits");
  return compare_logits(out.logits, expected, want.dim() == 3 ? in.attention_mask : torch::Tensor(), o);
}

// PEFT POLY folder beside case.json; expected.safetensors carries task_ids.
}  // namespace modula
