// Subcommands of the modula CLI: each adds itself to the app and runs the library.
#pragma once

#include <CLI/CLI.hpp>

namespace modula::cli {

void add_inspect(CLI::App& app);
void add_tokenize(CLI::App& app);
void add_tokenizer(CLI::App& app);  // tokenizer.cpp: tokenizer train
void add_generate(CLI::App& app);
void add_conformance(CLI::App& app);
void add_quickstart(CLI::App& app);
void add_export(CLI::App& app);
void add_merge(CLI::App& app);
void add_merge_adapters(CLI::App& app);
void add_moefy(CLI::App& app);    // moe.cpp
void add_upcycle(CLI::App& app);  // moe.cpp
void add_train(CLI::App& app);
void add_pretrain(CLI::App& app);
void add_eval(CLI::App& app);        // eval.cpp
void add_predict(CLI::App& app);     // predict.cpp
void add_bench(CLI::App& app);       // bench.cpp
void add_experiment(CLI::App& app);  // experiment.cpp
void add_serve(CLI::App& app);       // when built with cpp-httplib (MODULA_HAVE_SERVE)

}  // namespace modula::cli
