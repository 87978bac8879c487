// Module folders (adapter_config.json of every registered type) and composition specs.
#include "modula/backbone/registry.h"
#include "modula/composition/registry.h"
#include "modula/composition/spec.h"
#include "targets.h"

namespace modula::fuzz {

// The input is adapter_config.json: first as a fresh module's config (build_module), then as
// a folder next to the fixture LoRA's tensors (load_module); each module runs one forward.
void fuzz_adapter_config(const std::string& input) {
  static const std::string dir = scratch_folder_with(
      "adapter", "tests/fixtures/hf/adapters/llama-lora/adapter_model.safetensors", "adapter_model.safetensors");
  write_scratch("adapter/adapter_config.json", input);
  auto forward = [](Backbone& model) {
    BackboneInput in;
    in.input_ids = torch::tensor({{1, 2, 3}, {4, 5, 6}}, torch::kLong);
    (void)model.forward(in);
  };
  nlohmann::json config;
  try {
    config = nlohmann::json::parse(input);
  } catch (const nlohmann::json::exception&) {
  }
  if (config.is_object()) {
    auto model = load_backbone(source_path("tests/fixtures/hf/models/llama"));
    expect_clean_error([&] {
      auto a = build_module(*model, config);
      forward(*model);
    });
  }
  auto model = load_backbone(source_path("tests/fixtures/hf/models/llama"));
  expect_clean_error([&] {
    auto a = load_module(*model, dir);
    forward(*model);
  });
}

// Every form parse_spec reads; a spec that parses must survive its documented round trips.
void fuzz_composition_spec(const std::string& input) {
  expect_clean_error([&] {
    auto node = parse_spec(input);
    std::string text = to_string(node);
    if (to_string(parse_spec(text)) != text) throw std::logic_error("spec text form does not round-trip: " + text);
    if (to_string(parse_spec_json(to_json(node))) != text)
      throw std::logic_error("spec JSON form does not round-trip: " + text);
    (void)module_names(node);
  });
}

}  // namespace modula::fuzz
