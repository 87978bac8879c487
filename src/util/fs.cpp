#include "modula/util/fs.h"

#include <dirent.h>
#include <ftw.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <stdexcept>

namespace modula::fs {
namespace {

[[noreturn]] void fail(const char* op, const std::string& p) {
  throw std::runtime_error(std::string("[fs] ") + op + " " + p + ": " + std::strerror(errno));
}

bool stat_mode(const std::string& p, mode_t& mode) {
  struct stat st {};
  if (::stat(p.c_str(), &st) != 0) return false;
  mode = st.st_mode;
  return true;
}

void walk(const std::string& dir, const std::string& name, std::vector<std::string>& out) {
  DIR* d = ::opendir(dir.c_str());
  if (!d) return;
  while (dirent* e = ::readdir(d)) {
    std::string entry = e->d_name;
    if (entry == "." || entry == "..") continue;
    std::string p = join(dir, entry);
    if (is_dir(p))
      walk(p, name, out);
    else if (entry == name && is_file(p))
      out.push_back(p);
  }
  ::closedir(d);
}

}  // namespace

bool exists(const std::string& p) {
  mode_t m;
  return stat_mode(p, m);
}
bool is_dir(const std::string& p) {
  mode_t m;
  return stat_mode(p, m) && S_ISDIR(m);
}
bool is_file(const std::string& p) {
  mode_t m;
  return stat_mode(p, m) && S_ISREG(m);
}

std::string join(const std::string& a, const std::string& b) {
  if (a.empty()) return b;
  return a.back() == '/' ? a + b : a + "/" + b;
}

std::string parent(const std::string& p) {
  auto slash = p.find_last_of('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : p.substr(0, slash);
}

std::string filename(const std::string& p) {
  auto slash = p.find_last_of('/');
  return slash == std::string::npos ? p : p.substr(slash + 1);
}

std::string extension(const std::string& p) {
  std::string f = filename(p);
  auto dot = f.find_last_of('.');
  return dot == std::string::npos || dot == 0 ? "" : f.substr(dot);
}

void make_dirs(const std::string& p) {
  if (p.empty() || is_dir(p)) return;
  make_dirs(parent(p));
  if (::mkdir(p.c_str(), 0755) != 0 && errno != EEXIST) fail("mkdir", p);
}

void remove_tree(const std::string& p) noexcept {
  auto unlink_one = [](const char* path, const struct stat*, int, struct FTW*) { return ::remove(path); };
  ::nftw(p.c_str(), unlink_one, 16, FTW_DEPTH | FTW_PHYS);
}

void rename(const std::string& from, const std::string& to) {
  if (::rename(from.c_str(), to.c_str()) != 0) fail("rename", from + " -> " + to);
}

namespace {
// Writes `to`.tmp with `fill` and renames it over `to`, so a process killed mid-write never
// leaves a truncated `to` (in particular over a complete file of an earlier run).
template <typename Fill>
void write_via_tmp(const std::string& to, Fill&& fill) {
  const std::string tmp = to + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) fail("create", tmp);
    fill(out);
    out.flush();
    if (!out) fail("write", tmp);
  }
  rename(tmp, to);
}
}  // namespace

void copy_file(const std::string& from, const std::string& to) {
  std::ifstream in(from, std::ios::binary);
  if (!in) fail("open", from);
  write_via_tmp(to, [&](std::ofstream& out) { out << in.rdbuf(); });
}

void write_file(const std::string& path, const std::string& text) {
  write_via_tmp(path, [&](std::ofstream& out) { out << text; });
}

std::string make_temp_dir(const std::string& prefix) {
  const char* base = std::getenv("TMPDIR");
  std::string tmpl = join(base && *base ? base : "/tmp", prefix + "XXXXXX");
  if (!::mkdtemp(tmpl.data())) fail("mkdtemp", tmpl);
  return tmpl;
}

std::vector<std::string> find_files(const std::string& root, const std::string& name) {
  std::vector<std::string> out;
  walk(root, name, out);
  std::sort(out.begin(), out.end());
  return out;
}

std::vector<std::string> list_dir(const std::string& dir) {
  DIR* d = ::opendir(dir.c_str());
  if (!d) fail("open", dir);
  std::vector<std::string> out;
  while (dirent* e = ::readdir(d)) {
    std::string entry = e->d_name;
    if (entry != "." && entry != "..") out.push_back(std::move(entry));
  }
  ::closedir(d);
  std::sort(out.begin(), out.end());
  return out;
}

std::string read_file(const std::string& path) {
  if (is_dir(path)) throw std::runtime_error("[fs] read " + path + ": is a folder");
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("open", path);
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) fail("read", path);
  return ss.str();
}

std::string executable_dir() {
  char buf[4096];
  ssize_t n = ::readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  if (n <= 0) return "";
  return parent(std::string(buf, static_cast<size_t>(n)));
}

}  // namespace modula::fs
