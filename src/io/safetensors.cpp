// safetensors reader: dtype names, header validation, memory-mapped tensors.
// Writer: safetensors_write.cpp. Checkpoint folders: safetensors_checkpoint.cpp.
#include "modula/io/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <system_error>

#include "safetensors_fail.h"

// The format stores little-endian data and we map it as-is.
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "modula::io safetensors supports little-endian hosts only"
#endif

namespace modula::io {
namespace {

using nlohmann::json;

// Same cap as the reference (Rust) implementation: 100 MB of header.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;
constexpr int kMaxJsonDepth = 16;

using detail::fail;

[[noreturn]] void fail_key(const std::string& file, const std::string& key, const std::string& msg) {
  fail(file, "tensor '" + key + "': " + msg);
}

using detail::errno_text;

struct DtypeName {
  const char* name;
  torch::ScalarType type;
};

constexpr DtypeName kDtypes[] = {
    {"F64", torch::kFloat64}, {"F32", torch::kFloat32}, {"F16", torch::kFloat16}, {"BF16", torch::kBFloat16},
    {"I64", torch::kInt64},   {"I32", torch::kInt32},   {"I16", torch::kInt16},   {"I8", torch::kInt8},
    {"U8", torch::kUInt8},    {"BOOL", torch::kBool},
};

uint64_t read_le64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

// Parses JSON, rejecting duplicate object keys (nlohmann would silently keep the last)
// and deep nesting (a valid header nests 3 levels; this bounds memory on hostile input).
json parse_strict(const std::string& file, const char* begin, const char* end) {
  std::vector<std::set<std::string>> seen;
  std::string dup;
  auto cb = [&](int depth, json::parse_event_t ev, json& parsed) {
    const bool opens = ev == json::parse_event_t::object_start || ev == json::parse_event_t::array_start;
    if (opens && depth >= kMaxJsonDepth) fail(file, "header JSON nests deeper than " + std::to_string(kMaxJsonDepth));
    if (ev == json::parse_event_t::object_start) seen.emplace_back();
    if (ev == json::parse_event_t::object_end && !seen.empty()) seen.pop_back();
    if (ev == json::parse_event_t::key && !seen.empty() && !seen.back().insert(parsed.get<std::string>()).second &&
        dup.empty())
      dup = parsed.get<std::string>();
    return true;
  };
  json j;
  try {
    j = json::parse(begin, end, cb);
  } catch (const json::exception& e) {
    fail(file, std::string("header is not valid JSON: ") + e.what());
  }
  if (!dup.empty()) fail(file, "header has duplicate key '" + dup + "'");
  return j;
}

// A non-negative JSON integer; `what` names the field in errors.
uint64_t as_u64(const std::string& file, const std::string& key, const json& x, const std::string& what) {
  if (x.is_number_unsigned()) return x.get<uint64_t>();
  if (x.is_number_integer()) {
    if (x.get<int64_t>() >= 0) return static_cast<uint64_t>(x.get<int64_t>());
    fail_key(file, key, what + " is negative (" + x.dump() + ")");
  }
  fail_key(file, key, what + " must be a non-negative integer, got " + (x.is_number() ? x.dump() : x.type_name()));
}

const json& field(const std::string& file, const std::string& key, const json& entry, const char* name) {
  auto it = entry.find(name);
  if (it == entry.end()) fail_key(file, key, std::string("missing '") + name + "'");
  return *it;
}

std::vector<int64_t> parse_shape(const std::string& file, const std::string& key, const json& s) {
  if (!s.is_array()) fail_key(file, key, "'shape' must be an array, got " + std::string(s.type_name()));
  std::vector<int64_t> shape;
  for (const auto& d : s) {
    uint64_t v = as_u64(file, key, d, "shape entry");
    if (v > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
      fail_key(file, key, "shape entry " + std::to_string(v) + " is too large");
    shape.push_back(static_cast<int64_t>(v));
  }
  return shape;
}

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

// Byte size of a tensor, or false when the shape is too large for torch (product of
// max(dim, 1) times the element size must fit int64, so strides cannot overflow).
bool byte_size(const std::vector<int64_t>& shape, size_t elem, uint64_t& bytes) {
  uint64_t n = elem;
  bool empty = false;
  for (int64_t d : shape) {
    empty = empty || d == 0;
    if (__builtin_mul_overflow(n, static_cast<uint64_t>(std::max<int64_t>(d, 1)), &n)) return false;
  }
  if (n > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return false;
  bytes = empty ? 0 : n;
  return true;
}

TensorInfo parse_entry(const std::string& file, const std::string& key, const json& e, uint64_t buffer) {
  if (!e.is_object()) fail_key(file, key, "entry must be an object, got " + std::string(e.type_name()));
  TensorInfo t;
  t.name = key;
  const json& dt = field(file, key, e, "dtype");
  if (!dt.is_string()) fail_key(file, key, "'dtype' must be a string");
  try {
    t.dtype = dtype_from_string(dt.get<std::string>());
  } catch (const SafetensorsError&) {
    fail_key(file, key, "unsupported dtype '" + dt.get<std::string>() + "'");
  }
  t.shape = parse_shape(file, key, field(file, key, e, "shape"));
  const json& off = field(file, key, e, "data_offsets");
  if (!off.is_array() || off.size() != 2) fail_key(file, key, "'data_offsets' must be an array [begin, end]");
  t.begin = as_u64(file, key, off[0], "data_offsets begin");
  t.end = as_u64(file, key, off[1], "data_offsets end");
  if (t.begin > t.end)
    fail_key(file, key, "data_offsets begin " + std::to_string(t.begin) + " > end " + std::to_string(t.end));
  if (t.end > buffer)
    fail_key(file, key,
             "data_offsets end " + std::to_string(t.end) + " is beyond the data buffer (" + std::to_string(buffer) +
                 " bytes)");
  uint64_t bytes = 0;
  if (!byte_size(t.shape, c10::elementSize(t.dtype), bytes))
    fail_key(file, key, "shape " + shape_str(t.shape) + " is too large");
  if (bytes != t.end - t.begin)
    fail_key(file, key,
             "shape " + shape_str(t.shape) + " of " + dt.get<std::string>() + " needs " + std::to_string(bytes) +
                 " bytes but data_offsets span " + std::to_string(t.end - t.begin));
  return t;
}

std::map<std::string, std::string> parse_metadata(const std::string& file, const json& m) {
  if (!m.is_object()) fail(file, "__metadata__ must be an object of strings, got " + std::string(m.type_name()));
  std::map<std::string, std::string> out;
  for (const auto& [k, v] : m.items()) {
    if (!v.is_string()) fail(file, "__metadata__ value for '" + k + "' must be a string, got " + v.type_name());
    out[k] = v.get<std::string>();
  }
  return out;
}

// Non-empty byte ranges may not share bytes; empty tensors may sit anywhere.
void check_overlaps(const std::string& file, const std::map<std::string, TensorInfo>& tensors) {
  std::vector<const TensorInfo*> v;
  for (const auto& [k, t] : tensors)
    if (t.end > t.begin) v.push_back(&t);
  std::sort(v.begin(), v.end(), [](auto* a, auto* b) { return a->begin < b->begin; });
  const TensorInfo* last = nullptr;  // the range reaching furthest so far
  for (const TensorInfo* t : v) {
    if (last && t->begin < last->end)
      fail(file, "tensors '" + last->name + "' and '" + t->name + "' have overlapping data_offsets");
    if (!last || t->end > last->end) last = t;
  }
}

}  // namespace

torch::ScalarType dtype_from_string(const std::string& s) {
  for (const auto& d : kDtypes)
    if (s == d.name) return d.type;
  throw SafetensorsError("[safetensors] unsupported dtype '" + s +
                         "' (supported: F64 F32 F16 BF16 I64 I32 I16 I8 U8 BOOL)");
}

std::string dtype_to_string(torch::ScalarType t) {
  for (const auto& d : kDtypes)
    if (t == d.type) return d.name;
  throw SafetensorsError(std::string("[safetensors] unsupported dtype ") + c10::toString(t) +
                         " (supported: F64 F32 F16 BF16 I64 I32 I16 I8 U8 BOOL)");
}

// A private (copy-on-write) read-write mapping of the whole file.
struct SafetensorsFile::Mapping {
  uint8_t* data = nullptr;
  size_t size = 0;

  explicit Mapping(const std::string& path) {
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) fail(path, "cannot open: " + errno_text(errno));
    struct stat st {};
    if (::fstat(fd, &st) != 0) close_and_fail(fd, path, "cannot stat: " + errno_text(errno));
    if (!S_ISREG(st.st_mode)) close_and_fail(fd, path, "not a regular file");
    if (st.st_size < 8)
      close_and_fail(fd, path,
                     "file is " + std::to_string(st.st_size) + " bytes, shorter than the 8-byte header length");
    size = static_cast<size_t>(st.st_size);
    void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) close_and_fail(fd, path, "mmap failed: " + errno_text(errno));
    ::close(fd);
    data = static_cast<uint8_t*>(p);
  }
  ~Mapping() { ::munmap(data, size); }
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;

  [[noreturn]] static void close_and_fail(int fd, const std::string& path, const std::string& msg) {
    ::close(fd);
    fail(path, msg);
  }
};

SafetensorsFile SafetensorsFile::open(const std::string& path) {
  SafetensorsFile f;
  f.path_ = path;
  f.map_ = std::make_shared<Mapping>(path);
  const uint64_t size = f.map_->size;
  const uint64_t n = read_le64(f.map_->data);
  if (n == 0) fail(path, "header length is 0");
  if (n > kMaxHeaderBytes) fail(path, "header length " + std::to_string(n) + " exceeds the 100 MB limit");
  if (n > size - 8)
    fail(path, "header length " + std::to_string(n) + " exceeds the file size (" + std::to_string(size) + " bytes)");
  const char* h = reinterpret_cast<const char*>(f.map_->data + 8);
  json header = parse_strict(path, h, h + n);
  if (!header.is_object()) fail(path, "header must be a JSON object, got " + std::string(header.type_name()));
  f.data_start_ = 8 + n;
  const uint64_t buffer = size - f.data_start_;
  for (const auto& [key, value] : header.items()) {
    if (key == "__metadata__")
      f.metadata_ = parse_metadata(path, value);
    else
      f.tensors_.emplace(key, parse_entry(path, key, value, buffer));
  }
  check_overlaps(path, f.tensors_);
  return f;
}

std::vector<std::string> SafetensorsFile::keys() const {
  std::vector<std::string> out;
  for (const auto& kv : tensors_) out.push_back(kv.first);
  return out;
}

bool SafetensorsFile::contains(const std::string& name) const { return tensors_.count(name) > 0; }

const TensorInfo& SafetensorsFile::info(const std::string& name) const {
  auto it = tensors_.find(name);
  if (it != tensors_.end()) return it->second;
  std::string hint = std::to_string(tensors_.size()) + " tensors";
  size_t shown = 0;
  for (auto k = tensors_.begin(); k != tensors_.end() && shown < 5; ++k, ++shown)
    hint += (shown ? ", '" : ", e.g. '") + k->first + "'";
  fail(path_, "no tensor '" + name + "' (" + hint + ")");
}

torch::Tensor SafetensorsFile::get(const std::string& name) const {
  const TensorInfo& t = info(name);
  const auto opts = torch::TensorOptions().dtype(t.dtype).device(torch::kCPU);
  const size_t bytes = t.end - t.begin;
  uint8_t* p = map_->data + data_start_ + t.begin;
  // torch assumes bool bytes are 0 or 1; anything else is undefined behaviour.
  if (t.dtype == torch::kBool && std::any_of(p, p + bytes, [](uint8_t b) { return b > 1; }))
    fail_key(path_, name, "BOOL data holds bytes other than 0 and 1");
  if (bytes == 0) return torch::empty(t.shape, opts);
  if (reinterpret_cast<uintptr_t>(p) % c10::elementSize(t.dtype) != 0) {
    torch::Tensor copy = torch::empty(t.shape, opts);
    std::memcpy(copy.data_ptr(), p, bytes);
    return copy;
  }
  std::shared_ptr<Mapping> keep = map_;
  return torch::from_blob(
      p, t.shape, [keep](void*) {}, opts);
}

}  // namespace modula::io
