// modula: thin CLI over the library. Parse, call, print.
#include <iostream>

#include "commands.h"

int main(int argc, char** argv) {
  CLI::App app{"modula: modular deep learning engine (backbones, modules, routing, aggregation)"};
  app.require_subcommand(1);
  modula::cli::add_quickstart(app);
  modula::cli::add_inspect(app);
  modula::cli::add_tokenize(app);
  modula::cli::add_generate(app);
  modula::cli::add_export(app);
  modula::cli::add_merge(app);
  modula::cli::add_merge_adapters(app);
  modula::cli::add_moefy(app);
  modula::cli::add_upcycle(app);
  modula::cli::add_train(app);
  modula::cli::add_pretrain(app);
  modula::cli::add_conformance(app);
#ifdef MODULA_HAVE_SERVE
  modula::cli::add_serve(app);
#endif
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
