// Replays fuzz inputs without libFuzzer (the test suite's CTest fuzz_replay, and reproducing
// a crash in any build):
//   modula_fuzz_replay --all CORPUS_ROOT        every target: its fixture seeds and CORPUS_ROOT/<target>/*
//   modula_fuzz_replay TARGET FILE|DIR...       one target on the given inputs
//   modula_fuzz_replay --seed-into DIR TARGET   copies the target's fixture seeds into DIR
#include <dirent.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <sstream>

#include "modula/util/fs.h"
#include "targets.h"

namespace fs = modula::fs;
using modula::fuzz::FuzzTarget;

// The regular files of a folder (sorted), or the file itself.
static std::vector<std::string> input_files(const std::string& path) {
  std::vector<std::string> files;
  if (DIR* d = fs::is_dir(path) ? ::opendir(path.c_str()) : nullptr) {
    while (const dirent* e = ::readdir(d))
      if (fs::is_file(fs::join(path, e->d_name))) files.push_back(fs::join(path, e->d_name));
    ::closedir(d);
  } else if (fs::is_file(path)) {
    files.push_back(path);
  }
  std::sort(files.begin(), files.end());
  return files;
}

static std::vector<std::string> seed_files(const FuzzTarget& t) {
  std::vector<std::string> files;
  for (const auto& s : t.seeds)
    for (auto& f : input_files(modula::fuzz::source_path(s))) files.push_back(f);
  return files;
}

static std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

static size_t replay(const FuzzTarget& t, const std::vector<std::string>& files) {
  for (const auto& f : files) {
    std::fprintf(stderr, "%s: %s\n", t.name.c_str(), f.c_str());
    t.run(read_file(f));
  }
  return files.size();
}

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.size() == 3 && args[0] == "--seed-into") {
    const FuzzTarget* t = modula::fuzz::find_target(args[2]);
    if (!t) return std::fprintf(stderr, "error: no fuzz target '%s'\n", args[2].c_str()), 2;
    fs::make_dirs(args[1]);
    size_t i = 0;
    for (const auto& f : seed_files(*t)) fs::copy_file(f, fs::join(args[1], "seed-" + std::to_string(i++)));
    return 0;
  }
  if (args.size() == 2 && args[0] == "--all") {
    size_t total = 0;
    for (const auto& t : modula::fuzz::fuzz_targets()) {
      auto start = std::chrono::steady_clock::now();
      size_t n = replay(t, seed_files(t)) + replay(t, input_files(args[1] + "/" + t.name));
      double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      std::printf("%-18s %5zu inputs  %.2f s\n", t.name.c_str(), n, s);
      if (n == 0) return std::fprintf(stderr, "error: no inputs for fuzz target '%s'\n", t.name.c_str()), 1;
      total += n;
    }
    std::printf("replayed %zu inputs, no crash\n", total);
    return 0;
  }
  if (args.size() >= 2) {
    const FuzzTarget* t = modula::fuzz::find_target(args[0]);
    if (!t) return std::fprintf(stderr, "error: no fuzz target '%s'\n", args[0].c_str()), 2;
    size_t n = 0;
    for (size_t i = 1; i < args.size(); ++i) n += replay(*t, input_files(args[i]));
    std::printf("replayed %zu inputs, no crash\n", n);
    return 0;
  }
  std::fprintf(stderr, "usage: modula_fuzz_replay --all CORPUS_ROOT | TARGET FILE|DIR... | --seed-into DIR TARGET\n");
  return 2;
}
