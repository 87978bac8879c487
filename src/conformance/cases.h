// Shared by the conformance case kinds (runner.cpp and one file per later kind).
#pragma once

#include <torch/torch.h>

#include <nlohmann/json.hpp>
#include <string>

#include "modula/conformance.h"

namespace modula {

// Parses a JSON file; std::runtime_error naming the path.
nlohmann::json read_json(const std::string& path);

// Max |got-want| over positions where mask is 1 (mask [B,T] broadcast over trailing dims;
// undefined = everywhere); sets `ok` false if any compared value exceeds atol + rtol*|want|
// or is NaN. Throws std::runtime_error naming `what` on a shape mismatch.
double compare(const torch::Tensor& got, const torch::Tensor& want, const torch::Tensor& mask,
               const ConformanceOptions& o, bool& ok, const std::string& what);

// A case kind: runs the case in `dir` (its case.json parsed as `spec`).
using CaseFn = CaseResult (*)(const std::string& dir, const nlohmann::json& spec, const ConformanceOptions& o);

// mixed_case.cpp: "mixed-batch" (one LoRA adapter per row) and the POLY path of "adapter".
CaseResult mixed_batch_case(const std::string& dir, const nlohmann::json& spec, const ConformanceOptions& o);

// merge_case.cpp: "merge" (PEFT add_weighted_adapter over the parent's a0/a1/a2).
CaseResult merge_case(const std::string& dir, const nlohmann::json& spec, const ConformanceOptions& o);

}  // namespace modula
