// Training checkpoints: complete (tensors, optimizer state, scheduler/data/RNG state) and
// atomic. A checkpoint folder root/step-N is written as root/step-N.tmp — tensors.safetensors,
// optimizer.bin, state.json, each fsynced — then manifest.json (every file's size and
// FNV-1a 64 checksum) last, then renamed to step-N. A folder without a manifest, or whose
// files disagree with it (cut off mid-write, truncated, corrupted), is never used: loading
// falls back to the newest checkpoint that verifies. Older ones are removed only after a
// new one is complete, so a SIGKILL at any moment leaves a loadable checkpoint.
//
//   modula::train::save_checkpoint("runs/x/checkpoints", 50, data, /*keep=*/2);
//   if (auto ck = modula::train::load_latest_checkpoint("runs/x/checkpoints")) ...
#pragma once

#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "modula/io/safetensors.h"

namespace modula::train {

struct CheckpointData {
  io::NamedTensors tensors;  // model state (trainable tensors), RNG states
  std::string optimizer;     // serialized optimizer state (torch archive bytes)
  nlohmann::json state;      // step, data position, scheduler, early stopping, ...
};

struct LoadedCheckpoint {
  std::string dir;
  int64_t step = 0;
  CheckpointData data;
  std::vector<std::string> skipped;  // newer folders that failed verification, with the reason
};

// Returns the new folder. Throws TrainError naming the file on I/O failure (the previous
// checkpoints are then untouched).
std::string save_checkpoint(const std::string& root, int64_t step, const CheckpointData& data, int64_t keep);

// Empty string when `dir` is complete and matches its manifest; else the reason.
std::string verify_checkpoint(const std::string& dir);

// The newest checkpoint under root that verifies; nullopt when there is none.
std::optional<LoadedCheckpoint> load_latest_checkpoint(const std::string& root);

// FNV-1a 64-bit over a file's bytes, as 16 hex digits.
std::string file_checksum(const std::string& path);

}  // namespace modula::train
