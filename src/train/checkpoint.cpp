// Atomic, self-verifying checkpoint folders (temp folder + fsync + manifest last + rename).
#include "modula/train/checkpoint.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>

#include "modula/train/config.h"
#include "modula/util/error.h"
#include "modula/util/fs.h"
#include "modula/util/json.h"

namespace modula::train {
namespace {

using json = nlohmann::json;

constexpr std::string_view kCheckpointTag = "train";

const char* kTensors = "tensors.safetensors";
const char* kOptimizer = "optimizer.bin";
const char* kState = "state.json";
const char* kManifest = "manifest.json";

void fsync_path(const std::string& path, bool dir) {
  int fd = ::open(path.c_str(), dir ? O_RDONLY | O_DIRECTORY : O_RDONLY);
  if (fd < 0)
    throw_error<TrainError>(kCheckpointTag, "checkpoint: cannot open " + path + " for fsync: " + std::strerror(errno));
  int rc = ::fsync(fd);
  ::close(fd);
  if (rc != 0) throw_error<TrainError>(kCheckpointTag, "checkpoint: fsync " + path + ": " + std::strerror(errno));
}

void write_file(const std::string& path, const std::string& bytes) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0)
    throw_error<TrainError>(kCheckpointTag, "checkpoint: cannot create " + path + ": " + std::strerror(errno));
  size_t done = 0;
  while (done < bytes.size()) {
    ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      std::string why = std::strerror(errno);
      ::close(fd);
      throw_error<TrainError>(kCheckpointTag, "checkpoint: write " + path + ": " + why);
    }
    done += static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0)
    throw_error<TrainError>(kCheckpointTag, "checkpoint: fsync/close " + path + ": " + std::strerror(errno));
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw_error<TrainError>(kCheckpointTag, "checkpoint: cannot open " + path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

int64_t file_size(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 ? static_cast<int64_t>(st.st_size) : -1;
}

std::string step_name(int64_t step) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "step-%09lld", static_cast<long long>(step));
  return buf;
}

// Completed checkpoint folders (step-N, no suffix), newest first.
std::vector<std::pair<int64_t, std::string>> list_checkpoints(const std::string& root) {
  std::vector<std::pair<int64_t, std::string>> out;
  DIR* d = ::opendir(root.c_str());
  if (!d) return out;
  while (dirent* e = ::readdir(d)) {
    std::string name = e->d_name;
    if (name.rfind("step-", 0) != 0 || name.size() != 14 ||
        name.find_first_not_of("0123456789", 5) != std::string::npos)
      continue;
    out.emplace_back(std::stoll(name.substr(5)), fs::join(root, name));
  }
  ::closedir(d);
  std::sort(out.rbegin(), out.rend());
  return out;
}

}  // namespace

std::string file_checksum(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw_error<TrainError>(kCheckpointTag, "checkpoint: cannot open " + path);
  uint64_t h = 1469598103934665603ULL;  // FNV-1a 64 offset basis
  char buf[1 << 16];
  while (in) {
    in.read(buf, sizeof buf);
    for (std::streamsize i = 0; i < in.gcount(); ++i) h = (h ^ static_cast<unsigned char>(buf[i])) * 1099511628211ULL;
  }
  char hex[17];
  std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(h));
  return hex;
}

std::string save_checkpoint(const std::string& root, int64_t step, const CheckpointData& data, int64_t keep) {
  fs::make_dirs(root);
  const std::string final_dir = fs::join(root, step_name(step));
  const std::string tmp = final_dir + ".tmp";
  fs::remove_tree(tmp);
  fs::make_dirs(tmp);
  try {
    io::save_safetensors(fs::join(tmp, kTensors), data.tensors, {{"format", "pt"}});
    write_file(fs::join(tmp, kOptimizer), data.optimizer);
    write_file(fs::join(tmp, kState), data.state.dump(2));
    json manifest = {{"step", step}, {"files", json::object()}};
    for (const char* f : {kTensors, kOptimizer, kState}) {
      std::string p = fs::join(tmp, f);
      manifest["files"][f] = {{"size", file_size(p)}, {"fnv1a64", file_checksum(p)}};
    }
    write_file(fs::join(tmp, kManifest), manifest.dump(2));  // last: its presence marks completion
    fsync_path(tmp, true);
    fs::remove_tree(final_dir);  // a stale folder of the same step (resumed run)
    fs::rename(tmp, final_dir);
    fsync_path(root, true);
  } catch (...) {
    fs::remove_tree(tmp);
    throw;
  }
  // Only now drop the oldest complete checkpoints beyond `keep`.
  auto all = list_checkpoints(root);
  for (size_t i = static_cast<size_t>(std::max<int64_t>(keep, 1)); i < all.size(); ++i) fs::remove_tree(all[i].second);
  return final_dir;
}

std::string verify_checkpoint(const std::string& dir) {
  std::string mpath = fs::join(dir, kManifest);
  if (!fs::is_file(mpath)) return "no manifest.json (cut off before completion)";
  json m;
  try {
    m = parse_json(read_file(mpath));
  } catch (const std::exception& e) {
    return std::string("unreadable manifest.json: ") + e.what();
  }
  if (!m.contains("files") || !m["files"].is_object()) return "manifest.json has no 'files'";
  for (const char* f : {kTensors, kOptimizer, kState}) {
    if (!m["files"].contains(f)) return std::string("manifest.json does not list ") + f;
    std::string p = fs::join(dir, f);
    const auto& e = m["files"][f];
    int64_t size = file_size(p);
    if (size < 0) return std::string(f) + " is missing";
    if (size != e.value("size", int64_t{-1}))
      return std::string(f) + " has " + std::to_string(size) + " bytes, the manifest says " +
             e.value("size", json()).dump();
    if (file_checksum(p) != e.value("fnv1a64", std::string()))
      return std::string(f) + " checksum differs from the manifest";
  }
  return "";
}

std::optional<LoadedCheckpoint> load_latest_checkpoint(const std::string& root) {
  LoadedCheckpoint out;
  for (const auto& [step, dir] : list_checkpoints(root)) {
    std::string why = verify_checkpoint(dir);
    if (!why.empty()) {
      out.skipped.push_back(dir + ": " + why);
      continue;
    }
    out.dir = dir;
    out.step = step;
    auto file = io::SafetensorsFile::open(fs::join(dir, kTensors));
    for (const auto& k : file.keys()) out.data.tensors.emplace_back(k, file.get(k).clone());
    out.data.optimizer = read_file(fs::join(dir, kOptimizer));
    out.data.state = parse_json(read_file(fs::join(dir, kState)));
    return out;
  }
  return std::nullopt;
}

}  // namespace modula::train
