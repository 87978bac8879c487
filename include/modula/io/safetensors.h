// safetensors: read (memory-mapped, zero-copy where aligned) and write (atomic).
//
// Format: 8-byte little-endian header length N, N bytes of JSON
//   {"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ...,
//    "__metadata__": {"k": "v"}}
// then the byte buffer; offsets are relative to the buffer start.
//
//   auto f = modula::io::SafetensorsFile::open("model.safetensors");
//   torch::Tensor w = f.get("lm_head.weight");          // view on the mapping
//   modula::io::save_safetensors("out.safetensors", {{"w", w}}, {{"format", "pt"}});
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace modula::io {

// Thrown for every malformed or unreadable file; what() starts with "[safetensors] "
// and names the file and, where it applies, the tensor key.
struct SafetensorsError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct TensorInfo {
  std::string name;
  torch::ScalarType dtype;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // byte offsets into the data buffer, [begin, end)
  uint64_t end = 0;
};

// "F32" <-> torch::kFloat32 etc. Supported: F64 F32 F16 BF16 I64 I32 I16 I8 U8 BOOL.
torch::ScalarType dtype_from_string(const std::string& s);  // throws SafetensorsError
std::string dtype_to_string(torch::ScalarType t);           // throws SafetensorsError

class SafetensorsFile {
 public:
  // Maps the file and validates the header: length bounds, well-formed JSON,
  // known dtypes, dtype x shape = byte count, offsets inside the buffer and
  // non-overlapping. Throws SafetensorsError naming the file and key.
  static SafetensorsFile open(const std::string& path);

  const std::string& path() const { return path_; }
  std::vector<std::string> keys() const;  // sorted
  bool contains(const std::string& name) const;
  const TensorInfo& info(const std::string& name) const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

  // The tensor as a CPU tensor sharing the mapped memory (copy-on-write mapping,
  // so writing to it never changes the file). Falls back to a copy when the data
  // is not aligned for its dtype. The mapping lives as long as any returned tensor.
  // All gets of one opened file share that mapping: an in-place write to one returned
  // tensor is seen by later gets of the same key (clone() to get a private copy).
  // Truncating the file on disk while it is mapped is undefined (SIGBUS), as with any mmap.
  torch::Tensor get(const std::string& name) const;

 private:
  struct Mapping;
  std::string path_;
  std::shared_ptr<Mapping> map_;
  std::map<std::string, TensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
  uint64_t data_start_ = 0;
};

using NamedTensors = std::vector<std::pair<std::string, torch::Tensor>>;

// Writes tensors (made contiguous, moved to CPU) with the header keys in the given
// order (__metadata__ first when non-empty), header padded with spaces to 8 bytes.
// The data buffer is ordered by element size, largest first (stable, as the Python
// library does), so every tensor is aligned for zero-copy reading.
// Atomic: writes path + ".tmp", fsyncs, renames (the .tmp is removed on failure).
// Throws SafetensorsError on duplicate names, unsupported dtypes or I/O failure
// (disk full included); the original file is left untouched on failure.
void save_safetensors(const std::string& path, const NamedTensors& tensors,
                      const std::map<std::string, std::string>& metadata = {});

// A checkpoint folder: model.safetensors, or shards listed in
// model.safetensors.index.json ({"weight_map": {name: shard_file}}).
// Any single *.safetensors file in the folder is accepted too.
class Checkpoint {
 public:
  static Checkpoint open(const std::string& dir_or_file);
  std::vector<std::string> keys() const;  // sorted, across all shards
  bool contains(const std::string& name) const;
  const TensorInfo& info(const std::string& name) const;
  torch::Tensor get(const std::string& name) const;  // throws naming key + folder
  std::map<std::string, torch::Tensor> load_all() const;
  const std::string& source() const { return source_; }

 private:
  std::string source_;
  std::vector<SafetensorsFile> shards_;
  std::map<std::string, size_t> where_;  // key -> shard index
};

}  // namespace modula::io
