// Configs users type: train configs (YAML) and merge recipes, the recipe run on the fixture
// models it names (symlinked into the scratch folder as llama/, gpt2/, ...).
#include <unistd.h>

#include "modula/merge/merge_recipe.h"
#include "modula/train/config.h"
#include "targets.h"

namespace modula::fuzz {

void fuzz_train_yaml(const std::string& input) {
  std::string path = write_scratch("train.yaml", input);
  expect_clean_error([&] {
    auto config = train::load_train_config(path);
    train::check_routing(config, false);
  });
}

void fuzz_merge_recipe(const std::string& input) {
  static const bool linked = [] {
    for (const char* m : {"llama", "gpt2", "bert", "qwen2"})
      if (::symlink(source_path(std::string("tests/fixtures/hf/models/") + m).c_str(),
                    (scratch_dir() + "/" + m).c_str()))
        throw std::runtime_error(std::string("fuzz: cannot link the fixture model ") + m);
    return true;
  }();
  (void)linked;
  std::string path = write_scratch("recipe.yaml", input);
  expect_clean_error([&] {
    auto recipe = load_recipe(path);
    (void)run_merge(recipe, scratch_dir() + "/merged");
  });
}

}  // namespace modula::fuzz
