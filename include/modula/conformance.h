// Conformance runner: walks every case.json under a fixtures root (layout of the
// reference fixtures' README) and compares modula with the reference outputs.
//
//   auto results = modula::run_conformance("tests/fixtures");
//   for (auto& r : results) std::cout << modula::format(r) << "\n";
#pragma once

#include <string>
#include <vector>

namespace modula {

enum class CaseStatus { Pass, Fail, Skip };

struct CaseResult {
  std::string path;  // folder of the case.json
  std::string kind;  // "model", "tokenizers", "adapter", ...
  CaseStatus status = CaseStatus::Skip;
  double max_abs_diff = 0;  // worst compared value (tokenizers: number of mismatching probes)
  std::string detail;       // why it failed or was skipped
};

struct ConformanceOptions {
  double atol = 1e-4;  // fp32 CPU bar of the fixtures README
  double rtol = 1e-4;  // for large values: |a-b| <= atol + rtol*|b|
};

// Every case under `root`, sorted by path. Never throws for a bad case: an exception
// while running it makes that case FAIL with the message as detail.
std::vector<CaseResult> run_conformance(const std::string& root, const ConformanceOptions& options = {});
CaseResult run_case(const std::string& case_dir, const ConformanceOptions& options = {});

// "PASS  <path>  max_abs_diff=1.2e-06" (plus detail for FAIL/SKIP).
std::string format(const CaseResult& r);
// "N passed, M failed, K skipped"
std::string summary(const std::vector<CaseResult>& results);

}  // namespace modula
