// Test setup for the `modula merge` CLI tests: writes base/, a/, b/ and two recipes
// (ties.yaml that merges, bad.yaml with a missing weight) into the folder given.
#include <fstream>
#include <iostream>

#include "derived_models.h"

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: make_merge_models DIR\n";
    return 2;
  }
  std::string root = argv[1];
  modula::fs::make_dirs(root);
  modula::testing::write_merge_models(root);
  std::ofstream(modula::fs::join(root, "ties.yaml")) << R"(merge_method: ties
base_model: base
models:
  - model: a
    parameters: {weight: 0.7, density: 0.5}
  - model: b
    parameters: {weight: 0.3, density: [0.3, 0.7]}
parameters:
  normalize: true
output: merged
)";
  std::ofstream(modula::fs::join(root, "bad.yaml")) << R"(merge_method: task_arithmetic
base_model: base
models:
  - model: a
    parameters: {weight: 0.5}
  - model: b
output: merged-bad
)";
  std::cout << "wrote " << root << "\n";
  return 0;
}
