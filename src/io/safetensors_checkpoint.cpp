// Checkpoint folders: one model.safetensors, shards from model.safetensors.index.json,
// or a lone *.safetensors file.
#include <dirent.h>

#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "modula/io/safetensors.h"
#include "modula/util/fs.h"
#include "modula/util/json.h"
#include "modula/util/strings.h"
#include "safetensors_fail.h"

namespace modula::io {
namespace {

using nlohmann::json;

constexpr const char* kIndexName = "model.safetensors.index.json";
constexpr const char* kSingleName = "model.safetensors";

using detail::fail;

using fs::is_dir;
using fs::is_file;
using fs::join;

std::string parent_dir(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) return "";
  return slash == 0 ? "/" : path.substr(0, slash);
}

json read_json(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(path, "cannot open index file");
  std::stringstream ss;
  ss << in.rdbuf();
  try {
    return parse_json(ss.str());
  } catch (const JsonTextError& e) {
    fail(path, std::string("index is not valid JSON: ") + e.what());
  }
}

// Shard names come from the index; keep them inside the checkpoint folder.
void check_shard_name(const std::string& index, const std::string& key, const std::string& shard) {
  bool escapes = shard.empty() || shard[0] == '/';
  std::stringstream parts(shard);
  for (std::string part; std::getline(parts, part, '/');) escapes = escapes || part == "..";
  if (escapes)
    fail(index, "weight_map entry '" + key + "': shard '" + shard + "' must be a relative path inside the folder");
}

struct Loaded {
  std::vector<SafetensorsFile> shards;
  std::map<std::string, size_t> where;
};

Loaded load_single(const std::string& file) {
  Loaded l;
  l.shards.push_back(SafetensorsFile::open(file));
  for (const auto& k : l.shards[0].keys()) l.where.emplace(k, 0);
  return l;
}

// Opens each shard named in weight_map once and checks every key is really there.
Loaded load_index(const std::string& index) {
  const json j = read_json(index);
  if (!j.is_object()) fail(index, "index must be a JSON object");
  auto md = j.find("metadata");
  if (md != j.end() && !md->is_object() && !md->is_null()) fail(index, "'metadata' must be an object");
  auto wm = j.find("weight_map");
  if (wm == j.end() || !wm->is_object()) fail(index, "missing 'weight_map' object");
  Loaded l;
  std::map<std::string, size_t> shard_index;
  for (const auto& [key, value] : wm->items()) {
    if (!value.is_string()) fail(index, "weight_map entry '" + key + "' must be a file name string");
    const std::string shard = value.get<std::string>();
    check_shard_name(index, key, shard);
    auto it = shard_index.find(shard);
    if (it == shard_index.end()) {
      const std::string p = join(parent_dir(index), shard);
      if (!is_file(p)) fail(index, "shard '" + shard + "' (holding tensor '" + key + "') does not exist: " + p);
      l.shards.push_back(SafetensorsFile::open(p));
      it = shard_index.emplace(shard, l.shards.size() - 1).first;
    }
    if (!l.shards[it->second].contains(key))
      fail(index, "tensor '" + key + "' is mapped to shard '" + shard + "' but that shard does not contain it");
    l.where.emplace(key, it->second);
  }
  return l;
}

std::vector<std::string> safetensors_files_in(const std::string& dir) {
  DIR* d = ::opendir(dir.c_str());
  if (!d) fail(dir, "cannot list folder");
  std::vector<std::string> found;
  while (const dirent* e = ::readdir(d)) {
    const std::string p = join(dir, e->d_name);
    if (ends_with(e->d_name, ".safetensors") && is_file(p)) found.push_back(p);
  }
  ::closedir(d);
  std::sort(found.begin(), found.end());
  return found;
}

// model.safetensors.index.json, then model.safetensors, then a lone *.safetensors.
Loaded load_dir(const std::string& dir) {
  if (is_file(join(dir, kIndexName))) return load_index(join(dir, kIndexName));
  if (is_file(join(dir, kSingleName))) return load_single(join(dir, kSingleName));
  const std::vector<std::string> found = safetensors_files_in(dir);
  if (found.size() == 1) return load_single(found[0]);
  if (found.empty()) fail(dir, std::string("no ") + kIndexName + ", " + kSingleName + " or *.safetensors file");
  fail(dir, "no " + std::string(kIndexName) + " and " + std::to_string(found.size()) +
                " *.safetensors files; cannot tell which to load");
}

}  // namespace

Checkpoint Checkpoint::open(const std::string& dir_or_file) {
  const std::string& p = dir_or_file;
  Loaded l;
  if (is_dir(p))
    l = load_dir(p);
  else if (is_file(p))
    l = ends_with(p, ".json") ? load_index(p) : load_single(p);
  else
    fail(dir_or_file, "no such checkpoint file or folder");
  Checkpoint c;
  c.source_ = dir_or_file;
  c.shards_ = std::move(l.shards);
  c.where_ = std::move(l.where);
  return c;
}

std::vector<std::string> Checkpoint::keys() const {
  std::vector<std::string> out;
  for (const auto& kv : where_) out.push_back(kv.first);
  return out;
}

bool Checkpoint::contains(const std::string& name) const { return where_.count(name) > 0; }

const TensorInfo& Checkpoint::info(const std::string& name) const {
  auto it = where_.find(name);
  if (it != where_.end()) return shards_[it->second].info(name);
  std::string hint = std::to_string(where_.size()) + " tensors";
  size_t shown = 0;
  for (auto k = where_.begin(); k != where_.end() && shown < 5; ++k, ++shown)
    hint += (shown ? ", '" : ", e.g. '") + k->first + "'";
  fail(source_, "no tensor '" + name + "' (" + hint + ")");
}

torch::Tensor Checkpoint::get(const std::string& name) const {
  info(name);  // throws naming the checkpoint when the key is unknown
  return shards_[where_.at(name)].get(name);
}

std::map<std::string, torch::Tensor> Checkpoint::load_all() const {
  std::map<std::string, torch::Tensor> out;
  for (const auto& [key, shard] : where_) out.emplace(key, shards_[shard].get(key));
  return out;
}

}  // namespace modula::io
