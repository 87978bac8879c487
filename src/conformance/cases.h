// Shared by the conformance case kinds (runner.cpp, check.cpp and one file per later kind).
#pragma once

#include <torch/torch.h>

#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

#include "modula/conformance.h"
#include "modula/io/safetensors.h"

namespace modula {

// Error tag of every conformance message: "[conformance] ...".
inline constexpr std::string_view kConformanceTag = "conformance";

// Parses a JSON file; std::runtime_error naming the path.
nlohmann::json read_json(const std::string& path);

// expected.get(key), or std::runtime_error naming the file and the missing key.
torch::Tensor expected_tensor(const io::SafetensorsFile& expected, const std::string& key);

// The comparisons of one case (check.cpp). compare() checks one tensor at the positions
// where mask is 1 (mask [B,T] broadcast over trailing dims; undefined = everywhere):
// a value passes when |got-want| <= max(atol, rtol*|want|) — the fixtures README's
// "max abs diff within 1e-4 (relative 1e-4 for large values)". NaN/Inf on either side,
// or a mask that keeps nothing, fails naming the tensor. A shape mismatch or an undefined
// `got` throws std::runtime_error naming `what`.
//
//   CaseCheck c(o);
//   c.compare(out.logits, expected_tensor(file, "logits"), mask, "logits");
//   return c.result();  // FAIL if any compare failed or nothing was compared
class CaseCheck {
 public:
  explicit CaseCheck(const ConformanceOptions& o) : o_(o) {}
  void compare(const torch::Tensor& got, const torch::Tensor& want, const torch::Tensor& mask, const std::string& what);
  int compared() const { return compared_; }
  // Pass/Fail, worst |got-want|, tensors compared; detail: the first failure, else `note`.
  CaseResult result(const std::string& note = "") const;

 private:
  void fail(const std::string& why);
  ConformanceOptions o_;
  double worst_ = 0;
  int compared_ = 0;
  int failures_ = 0;
  std::string first_failure_;
};

// A case kind: runs the case in `dir` (its case.json parsed as `spec`; `o` holds the
// case's own tolerance where case.json states one).
using CaseFn = CaseResult (*)(const std::string& dir, const nlohmann::json& spec, const ConformanceOptions& o);

// mixed_case.cpp: "mixed-batch" (one LoRA adapter per row) and the POLY path of "adapter".
CaseResult mixed_batch_case(const std::string& dir, const nlohmann::json& spec, const ConformanceOptions& o);

// merge_case.cpp: "merge" (PEFT add_weighted_adapter over the parent's a0/a1/a2).
CaseResult merge_case(const std::string& dir, const nlohmann::json& spec, const ConformanceOptions& o);

}  // namespace modula
