// File formats read from downloaded checkpoints: safetensors, the shard index, config.json
// (with the checkpoint it describes), and the YAML reader behind configs and recipes.
#include "modula/backbone/registry.h"
#include "modula/io/hf_config.h"
#include "modula/io/safetensors.h"
#include "modula/io/yaml.h"
#include "targets.h"

namespace modula::fuzz {

// Every tensor read in full (a header that lies about offsets shows here, under ASan).
static void read_all(const io::Checkpoint& ckpt) {
  for (const auto& key : ckpt.keys()) (void)ckpt.get(key).sum().item<double>();
}

void fuzz_safetensors(const std::string& input) {
  std::string path = write_scratch("input.safetensors", input);
  expect_clean_error([&] {
    auto file = io::SafetensorsFile::open(path);
    for (const auto& key : file.keys()) (void)file.get(key).sum().item<double>();
  });
}

// A folder with one real shard; the input is its model.safetensors.index.json.
void fuzz_checkpoint_index(const std::string& input) {
  static const std::string dir = scratch_folder_with("sharded", "tests/fixtures/hf/models/llama/model.safetensors",
                                                     "model-00001-of-00001.safetensors");
  write_scratch("sharded/model.safetensors.index.json", input);
  expect_clean_error([&] { read_all(io::Checkpoint::open(dir)); });
}

// The input is config.json next to the fixture checkpoint of its model_type (llama when the
// type is unknown): parsing, then building and loading the model it describes.
void fuzz_hf_config(const std::string& input) {
  std::string type = "llama";
  try {
    auto j = nlohmann::json::parse(input);
    if (j.is_object() && j.contains("model_type") && j["model_type"].is_string()) type = j["model_type"];
  } catch (const nlohmann::json::exception&) {
  }
  if (type != "gpt2" && type != "bert" && type != "mistral" && type != "qwen2" && type != "xlm-roberta") type = "llama";
  const std::string dir = scratch_folder_with(
      "model-" + type, "tests/fixtures/hf/models/" + type + "/model.safetensors", "model.safetensors");
  write_scratch("model-" + type + "/config.json", input);
  expect_clean_error([&] {
    auto config = io::load_hf_config(dir + "/config.json");
    // The documented round trip: what we write, we read back the same.
    if (io::to_hf_json(io::parse_hf_config(io::to_hf_json(config))) != io::to_hf_json(config))
      throw std::logic_error("config.json does not round-trip through to_hf_json");
    auto model = load_backbone(dir);
    BackboneInput in;
    in.input_ids = torch::tensor({{1, 2, 3}}, torch::kLong);
    (void)model->forward(in);
  });
}

void fuzz_yaml(const std::string& input) {
  expect_clean_error([&] { (void)io::yaml_to_json(input, "fuzz.yaml").dump(); });
}

}  // namespace modula::fuzz
