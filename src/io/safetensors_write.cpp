// safetensors writer: validated, aligned, atomic (temp file + fsync + rename).
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <nlohmann/json.hpp>
#include <numeric>
#include <set>
#include <system_error>

#include "modula/io/safetensors.h"
#include "safetensors_fail.h"

namespace modula::io {
namespace {

using ojson = nlohmann::ordered_json;

using detail::fail;

using detail::errno_text;

struct Item {
  std::string name;
  std::string dtype;
  torch::Tensor data;  // contiguous CPU
  uint64_t begin = 0, end = 0;
};

// Checks names and dtypes and makes contiguous CPU copies, in the given order.
std::vector<Item> prepare(const std::string& path, const NamedTensors& tensors) {
  std::vector<Item> items;
  std::set<std::string> names;
  for (const auto& [name, t] : tensors) {
    const std::string where = "tensor '" + name + "': ";
    if (!names.insert(name).second) fail(path, "duplicate tensor name '" + name + "'");
    if (name == "__metadata__") fail(path, "'__metadata__' is reserved and cannot name a tensor");
    if (!t.defined()) fail(path, where + "undefined tensor");
    if (t.layout() != torch::kStrided) fail(path, where + "only dense (strided) tensors can be saved");
    Item it;
    it.name = name;
    try {
      it.dtype = dtype_to_string(t.scalar_type());
      it.data = t.to(torch::kCPU).contiguous();
    } catch (const SafetensorsError&) {
      fail(path, where + "unsupported dtype " + c10::toString(t.scalar_type()));
    } catch (const c10::Error& e) {
      fail(path, where + "cannot copy to CPU: " + e.what_without_backtrace());
    }
    items.push_back(std::move(it));
  }
  return items;
}

// Data is laid out by element size, largest first (stable), like the Python library:
// every byte size is a multiple of its element size, so every tensor stays aligned.
std::vector<size_t> assign_offsets(std::vector<Item>& items) {
  std::vector<size_t> order(items.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return items[a].data.element_size() > items[b].data.element_size(); });
  uint64_t offset = 0;
  for (size_t i : order) {
    items[i].begin = offset;
    offset += static_cast<uint64_t>(items[i].data.nbytes());
    items[i].end = offset;
  }
  return order;
}

// Header JSON: __metadata__ first (when non-empty), then tensors in the given order,
// padded with spaces to a multiple of 8 bytes as the Python library does.
std::string build_header(const std::string& path, const std::vector<Item>& items,
                         const std::map<std::string, std::string>& metadata) {
  ojson h = ojson::object();
  if (!metadata.empty()) h["__metadata__"] = metadata;
  for (const Item& it : items) {
    ojson e = ojson::object();
    e["dtype"] = it.dtype;
    e["shape"] = it.data.sizes().vec();
    e["data_offsets"] = {it.begin, it.end};
    h[it.name] = std::move(e);
  }
  std::string s;
  try {
    s = h.dump();
  } catch (const ojson::exception& e) {
    fail(path, std::string("tensor names and metadata must be valid UTF-8: ") + e.what());
  }
  s.append((8 - s.size() % 8) % 8, ' ');
  return s;
}

// The temp file: closed and removed on destruction unless committed.
struct TempFile {
  std::string path;
  int fd = -1;
  bool committed = false;
  ~TempFile() {
    if (fd >= 0) ::close(fd);
    if (!committed) ::unlink(path.c_str());
  }
};

void write_all(const std::string& dest, TempFile& tmp, const void* data, size_t n) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    ssize_t w = ::write(tmp.fd, p, std::min<size_t>(n, size_t{1} << 30));
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) fail(dest, "write to " + tmp.path + " failed: " + errno_text(errno));
    p += w;
    n -= static_cast<size_t>(w);
  }
}

// Makes the rename durable; best effort, since some filesystems refuse fsync on directories.
void sync_parent_dir(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  const std::string dir = slash == std::string::npos ? "." : (slash == 0 ? "/" : path.substr(0, slash));
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;
  ::fsync(fd);
  ::close(fd);
}

}  // namespace

void save_safetensors(const std::string& path, const NamedTensors& tensors,
                      const std::map<std::string, std::string>& metadata) {
  std::vector<Item> items = prepare(path, tensors);
  const std::vector<size_t> order = assign_offsets(items);
  const std::string header = build_header(path, items, metadata);

  TempFile tmp{path + ".tmp"};
  tmp.fd = ::open(tmp.path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
  if (tmp.fd < 0) {
    tmp.committed = true;  // nothing was created, so nothing to remove
    fail(path, "cannot create " + tmp.path + ": " + errno_text(errno));
  }
  uint8_t len[8];
  for (int i = 0; i < 8; ++i) len[i] = static_cast<uint8_t>(static_cast<uint64_t>(header.size()) >> (8 * i));
  write_all(path, tmp, len, sizeof len);
  write_all(path, tmp, header.data(), header.size());
  for (size_t i : order) write_all(path, tmp, items[i].data.data_ptr(), items[i].data.nbytes());
  if (::fsync(tmp.fd) != 0) fail(path, "fsync of " + tmp.path + " failed: " + errno_text(errno));
  const int fd = tmp.fd;
  tmp.fd = -1;
  if (::close(fd) != 0) fail(path, "close of " + tmp.path + " failed: " + errno_text(errno));
  if (::rename(tmp.path.c_str(), path.c_str()) != 0)
    fail(path, "rename of " + tmp.path + " failed: " + errno_text(errno));
  tmp.committed = true;
  sync_parent_dir(path);
}

}  // namespace modula::io
