// The fuzz targets and the fixtures that seed them.
#include <algorithm>

#include "modula/text/tokenizer.h"
#include "targets.h"

namespace modula::fuzz {

static std::vector<FuzzTarget> all_targets() {
  return {
      {"safetensors",
       {"tests/fixtures/hf/models/llama/model.safetensors",
        "tests/fixtures/hf/adapters/gpt2-lora/adapter_model.safetensors"},
       fuzz_safetensors},
      {"checkpoint_index", {}, fuzz_checkpoint_index},
      {"hf_config",
       {"tests/fixtures/hf/models/llama/config.json", "tests/fixtures/hf/models/gpt2/config.json",
        "tests/fixtures/hf/models/bert-cls/config.json", "tests/fixtures/hf/models/qwen2/config.json",
        "tests/fixtures/hf/models/mistral/config.json"},
       fuzz_hf_config},
      {"yaml", {}, fuzz_yaml},
      {"tokenizer_json",
       {"tests/fixtures/hf/tokenizers/bytelevel-bpe.json", "tests/fixtures/hf/tokenizers/wordpiece.json",
        "tests/fixtures/hf/tokenizers/unigram.json"},
       fuzz_tokenizer_json},
      {"sentencepiece", {"tests/fixtures/hf/tokenizers/sentencepiece.model"}, fuzz_sentencepiece},
      {"adapter_config",
       {"tests/fixtures/hf/adapters/llama-lora/adapter_config.json",
        "tests/fixtures/hf/adapters/llama-ia3/adapter_config.json",
        "tests/fixtures/hf/adapters/llama-prompt/adapter_config.json",
        "tests/fixtures/hf/adapters/llama-prefix/adapter_config.json",
        "tests/fixtures/hf/adapters/llama-poly/adapter_config.json",
        "tests/fixtures/hf/adapters/llama-lora-dora/adapter_config.json",
        "tests/fixtures/hf/adapters/llama-lora-pattern/adapter_config.json"},
       fuzz_adapter_config},
      {"composition_spec", {}, fuzz_composition_spec},
      {"train_yaml", {}, fuzz_train_yaml},
      {"merge_recipe", {}, fuzz_merge_recipe},
#ifdef MODULA_HAVE_SERVE
      {"openai_request", {}, fuzz_openai_request},
      {"chat_template", {}, fuzz_chat_template},
#endif
  };
}

const std::vector<FuzzTarget>& fuzz_targets() {
  static const std::vector<FuzzTarget> targets = [] {
    auto all = all_targets();
    // An AddressSanitizer build (scripts/fuzz.sh) cannot load SentencePiece (tokenizer.h):
    // the target is replayed in the plain build only.
    if (!text::sentencepiece_available())
      all.erase(std::remove_if(all.begin(), all.end(), [](const FuzzTarget& t) { return t.name == "sentencepiece"; }),
                all.end());
    return all;
  }();
  return targets;
}

const FuzzTarget* find_target(const std::string& name) {
  for (const auto& t : fuzz_targets())
    if (t.name == name) return &t;
  return nullptr;
}

}  // namespace modula::fuzz
