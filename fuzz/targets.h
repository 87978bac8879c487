// Fuzz targets: one per format users hand to modula (issue 14). Each takes the raw bytes of
// one input; bad input must end in an error that names what was wrong (std::invalid_argument
// or std::runtime_error with a message: ConfigError, SafetensorsError, ApiError, ...).
// Anything else — a crash, a sanitizer report, an unnamed exception (nlohmann's, torch's,
// std::bad_alloc, std::out_of_range) — aborts, so the fuzzer keeps the input.
//
// Two drivers share the table: libFuzzer (fuzz/libfuzzer_main.cpp, scripts/fuzz.sh) and the
// corpus replay the test suite runs (fuzz/replay_main.cpp, CTest fuzz_replay).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace modula::fuzz {

struct FuzzTarget {
  std::string name;
  // Seed inputs from the test fixtures, relative to the source tree (files or folders
  // whose files all qualify); fuzz/corpus/<name>/ holds the hand-written seeds and the
  // inputs that once crashed.
  std::vector<std::string> seeds;
  std::function<void(const std::string& input)> run;
};

const std::vector<FuzzTarget>& fuzz_targets();
const FuzzTarget* find_target(const std::string& name);

// Runs `body`; an exception that names the problem returns normally, anything else prints
// the exception and aborts.
void expect_clean_error(const std::function<void()>& body);

// A private folder for this process (created once, under $TMPDIR).
const std::string& scratch_dir();
// Writes `input` to scratch_dir()/name and returns the path.
std::string write_scratch(const std::string& name, const std::string& input);
// The source tree (compiled in), for fixtures the targets load.
std::string source_path(const std::string& relative);
// scratch_dir()/folder holding a copy of the fixture file `fixture` (relative to the source
// tree) as `name`, copied once; returns the folder.
std::string scratch_folder_with(const std::string& folder, const std::string& fixture, const std::string& name);

// The targets, one function per format family (registry.cpp lists them).
void fuzz_safetensors(const std::string& input);
void fuzz_checkpoint_index(const std::string& input);
void fuzz_hf_config(const std::string& input);
void fuzz_yaml(const std::string& input);
void fuzz_tokenizer_json(const std::string& input);
void fuzz_sentencepiece(const std::string& input);
void fuzz_adapter_config(const std::string& input);
void fuzz_composition_spec(const std::string& input);
void fuzz_train_yaml(const std::string& input);
void fuzz_merge_recipe(const std::string& input);
void fuzz_openai_request(const std::string& input);
void fuzz_chat_template(const std::string& input);

}  // namespace modula::fuzz
