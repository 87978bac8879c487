// Conformance kind of the composition layer: "mixed-batch" (one LoRA adapter per row).
// (POLY folders are "adapter" cases: runner.cpp loads them through the module registry.)
#include <algorithm>

#include "cases.h"
#include "modula/backbone/registry.h"
#include "modula/composition/mixed.h"
#include "modula/io/safetensors.h"
#include "modula/util/fs.h"

namespace modula {

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
  auto want = expected_tensor(expected, "logits");
  BackboneInput in;
  in.input_ids = expected_tensor(expected, "input_ids").clone();
  in.attention_mask = expected_tensor(expected, "attention_mask").clone();
  torch::NoGradGuard no_grad;
  auto out = model->forward(in);
  CaseCheck checks(o);
  checks.compare(out.logits, want, want.dim() == 3 ? in.attention_mask : torch::Tensor(), "logits");
  return checks.result();
}

}  // namespace modula
