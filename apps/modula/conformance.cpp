#include "modula/conformance.h"

#include <iostream>

#include "commands.h"

namespace modula::cli {

void add_conformance(CLI::App& app) {
  auto* cmd = app.add_subcommand("conformance", "Compare modula with reference fixtures (every case.json under ROOT)");
  static std::string root;
  static ConformanceOptions o;
  cmd->add_option("root", root, "Fixtures root")->required();
  cmd->add_option("--atol", o.atol, "Absolute tolerance")->capture_default_str();
  cmd->add_option("--rtol", o.rtol, "Relative tolerance")->capture_default_str();
  cmd->callback([] {
    auto results = run_conformance(root, o);
    bool failed = false;
    for (const auto& r : results) {
      std::cout << format(r) << "\n";
      failed |= r.status == CaseStatus::Fail;
    }
    std::cout << summary(results) << std::endl;
    if (failed) throw CLI::RuntimeError(1);
  });
}

}  // namespace modula::cli
