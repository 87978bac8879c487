// A fresh temporary folder removed at scope exit (POSIX, see modula/util/fs.h).
#pragma once

#include <string>

#include "modula/util/fs.h"

namespace modula::testing {

struct TempDir {
  std::string path = fs::make_temp_dir("modula-test-");
  ~TempDir() { fs::remove_tree(path); }
  std::string operator/(const std::string& name) const { return fs::join(path, name); }
};

inline std::string fixture(const std::string& rel) { return std::string(MODULA_FIXTURES) + "/" + rel; }

}  // namespace modula::testing
