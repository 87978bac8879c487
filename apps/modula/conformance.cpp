#include "modula/conformance.h"

#include <iostream>

#include "commands.h"

namespace modula::cli {

void add_conformance(CLI::App& app) {
  auto* cmd = app.add_subcommand("conformance", "Compare modula with reference fixtures (every case.json under ROOT)");
  static std::string root;
  static ConformanceOptions o;
  cmd->add_option("root", root, "Fixtures root")->required();
  cmd->add_option("--atol", o.atol, "Absolute tolerance: |got-want| <= max(atol, rtol*|want|)")->capture_default_str();
  cmd->add_option("--rtol", o.rtol, "Relative tolerance (applies where |want| > atol/rtol)")->capture_default_str();
  cmd->add_option("--min-cases", o.min_cases, "Error when ROOT holds fewer case.json (a lost fixture folder)")
      ->capture_default_str();
  cmd->callback([] {
    auto results = run_conformance(root, o);
    bool failed = false;
    for (const auto& r : results) {
      std::cout << format(r) << "\n";
      failed |= r.status != CaseStatus::Pass;
    }
    std::cout << summary(results) << std::endl;
    if (failed) throw CLI::RuntimeError(1);
  });
}

}  // namespace modula::cli
