// modula: thin CLI over the library. Parse, call, print.
// Exit codes: 0 ok, 1 runtime error (the command could not do its work), 2 usage error
// (unknown subcommand or flag, bad or missing value, no subcommand).
#include <algorithm>
#include <cstdint>
#include <iostream>
#include <string>
#include <vector>

#include "commands.h"

#ifndef MODULA_VERSION
#define MODULA_VERSION "unknown"
#endif

namespace {

constexpr int kRuntimeError = 1, kUsageError = 2;

// Levenshtein distance: the closest subcommand is the suggestion for a mistyped one.
size_t subcommand_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diagonal = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diagonal = up;
    }
  }
  return row[b.size()];
}

// "unknown subcommand 'foo'; did you mean 'moefy'?" when argv[1] names no subcommand; "" otherwise.
std::string unknown_subcommand(CLI::App& app, int argc, char** argv) {
  if (argc < 2 || argv[1][0] == '-') return "";  // flags of the app itself: CLI11 checks them
  const std::string given = argv[1];
  std::string best;
  size_t best_distance = SIZE_MAX;
  for (const auto* sub : app.get_subcommands([](CLI::App*) { return true; })) {
    if (sub->check_name(given)) return "";
    const size_t d = subcommand_distance(given, sub->get_name());
    if (d < best_distance) best = sub->get_name(), best_distance = d;
  }
  return "unknown subcommand '" + given + "'" + (best.empty() ? "" : "; did you mean '" + best + "'?");
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"modula: modular deep learning engine (backbones, modules, routing, aggregation)"};
  app.footer("Exit codes: 0 ok, 1 runtime error, 2 usage error.");
  app.require_subcommand(0, 1);  // none: the help and exit code 2 (below)
  app.set_version_flag("--version", std::string("modula ") + MODULA_VERSION);
  app.failure_message([](const CLI::App*, const CLI::Error& e) {
    return "error: " + std::string(e.what()) + "\nRun with --help for more information.\n";
  });
  app.add_subcommand("version", "Print the version and exit")->callback([] {
    std::cout << "modula " << MODULA_VERSION << "\n";
  });
  modula::cli::add_quickstart(app);
  modula::cli::add_inspect(app);
  modula::cli::add_tokenize(app);
  modula::cli::add_tokenizer(app);
  modula::cli::add_generate(app);
  modula::cli::add_export(app);
  modula::cli::add_merge(app);
  modula::cli::add_merge_adapters(app);
  modula::cli::add_moefy(app);
  modula::cli::add_upcycle(app);
  modula::cli::add_train(app);
  modula::cli::add_pretrain(app);
  modula::cli::add_eval(app);
  modula::cli::add_predict(app);
  modula::cli::add_conformance(app);
  modula::cli::add_bench(app);
  modula::cli::add_experiment(app);
#ifdef MODULA_HAVE_SERVE
  modula::cli::add_serve(app);
#endif
  if (auto unknown = unknown_subcommand(app, argc, argv); !unknown.empty()) {
    std::cerr << "error: " << unknown << "\nRun 'modula --help' for the subcommands.\n";
    return kUsageError;
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::RuntimeError& e) {  // a subcommand's own failure, already reported
    return e.get_exit_code();
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : kUsageError;  // --help and --version exit 0
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return kRuntimeError;
  }
  if (app.get_subcommands().empty()) {
    std::cerr << app.help();
    return kUsageError;
  }
  return 0;
}
