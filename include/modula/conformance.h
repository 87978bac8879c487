// Conformance runner: walks every case.json under a fixtures root (layout of the
// reference fixtures' README) and compares modula with the reference outputs.
//
//   auto results = modula::run_conformance("tests/fixtures");
//   for (auto& r : results) std::cout << modula::format(r) << "\n";
//
// Strict: a case passes only when it compared something and every compared value is
// within tolerance. FAIL, never PASS or SKIP, for a missing or unknown `kind`, a kind's
// feature modula lacks (an unsupported peft_type), an expected file without the tensor
// the kind compares, NaN/Inf on either side, or an exception while running the case.
#pragma once

#include <string>
#include <vector>

namespace modula {

// Skip is kept for kinds that may one day not apply on a machine (none does today).
enum class CaseStatus { Pass, Fail, Skip };

struct CaseResult {
  std::string path;  // folder of the case.json
  std::string kind;  // "model", "tokenizers", "adapter", ...
  CaseStatus status = CaseStatus::Fail;
  double max_abs_diff = 0;  // worst compared value (tokenizers: number of mismatching probes)
  int compared = 0;         // tensors (tokenizers: probes) compared; a case with 0 never passes
  std::string detail;       // why it failed (the first failing tensor), or what was compared
};

// The fixtures README's bar: |got-want| <= max(atol, rtol*|want|), i.e. absolute 1e-4,
// relative 1e-4 where |want| > 1. A case.json may state its own "atol" / "rtol" (numbers
// >= 0), which then replace these for that case.
struct ConformanceOptions {
  double atol = 1e-4;
  double rtol = 1e-4;
  int min_cases = 1;  // run_conformance throws when fewer case.json are found (a lost folder)
  // Throws std::invalid_argument naming the bad field (negative or non-finite tolerance,
  // min_cases < 0).
  void validate() const;
};

// Every case under `root`, sorted by path. Throws for a root that is not a folder or holds
// fewer than options.min_cases cases; never throws for a bad case: an exception while
// running it makes that case FAIL with the message as detail.
std::vector<CaseResult> run_conformance(const std::string& root, const ConformanceOptions& options = {});
CaseResult run_case(const std::string& case_dir, const ConformanceOptions& options = {});

// "PASS  <path>  max_abs_diff=1.2e-06" (plus detail for FAIL/SKIP).
std::string format(const CaseResult& r);
// "N passed, M failed, K skipped"
std::string summary(const std::vector<CaseResult>& results);

}  // namespace modula
