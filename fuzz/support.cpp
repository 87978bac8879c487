// The error policy and scratch files shared by every fuzz target.
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <stdexcept>
#include <typeinfo>

#include "modula/util/fs.h"
#include "targets.h"

namespace modula::fuzz {

[[noreturn]] static void unclean(const char* kind, const std::string& what) {
  std::fprintf(stderr, "fuzz: input ended in %s: %s\n", kind, what.c_str());
  std::fflush(stderr);
  std::abort();
}

// MODULA_FUZZ_VERBOSE=1: each input's outcome on stderr (do the seeds reach past the parser?).
static void outcome(const char* what) {
  static const bool verbose = std::getenv("MODULA_FUZZ_VERBOSE") != nullptr;
  if (verbose) std::fprintf(stderr, "  -> %s\n", what);
}

void expect_clean_error(const std::function<void()>& body) {
  try {
    body();
    outcome("ok");
  } catch (const std::invalid_argument& e) {
    if (!*e.what()) unclean("std::invalid_argument without a message", "");
    outcome(e.what());
  } catch (const std::runtime_error& e) {
    if (!*e.what()) unclean("std::runtime_error without a message", "");
    outcome(e.what());
  } catch (const std::exception& e) {
    unclean(typeid(e).name(), e.what());
  } catch (...) {
    unclean("a non-std exception", "");
  }
}

const std::string& scratch_dir() {
  static const std::string dir = [] {
    std::string d = fs::make_temp_dir("modula-fuzz-");
    std::atexit([] { fs::remove_tree(scratch_dir()); });
    return d;
  }();
  return dir;
}

std::string write_scratch(const std::string& name, const std::string& input) {
  std::string path = scratch_dir() + "/" + name;
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(input.data(), static_cast<std::streamsize>(input.size()));
  if (!out) {
    std::fprintf(stderr, "fuzz: cannot write %s\n", path.c_str());
    std::abort();
  }
  return path;
}

std::string source_path(const std::string& relative) { return std::string(MODULA_SOURCE_DIR) + "/" + relative; }

std::string scratch_folder_with(const std::string& folder, const std::string& fixture, const std::string& name) {
  const std::string dir = fs::join(scratch_dir(), folder);
  if (!fs::is_file(fs::join(dir, name))) {
    fs::make_dirs(dir);
    fs::copy_file(source_path(fixture), fs::join(dir, name));
  }
  return dir;
}

}  // namespace modula::fuzz
