// A fresh temporary folder removed at scope exit.
#pragma once

#include <filesystem>
#include <random>
#include <string>

namespace modula::testing {

struct TempDir {
  std::filesystem::path path;
  TempDir() {
    std::random_device rd;
    path = std::filesystem::temp_directory_path() / ("modula-test-" + std::to_string(rd()) + std::to_string(rd()));
    std::filesystem::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  std::string operator/(const std::string& name) const { return (path / name).string(); }
};

inline std::string fixture(const std::string& rel) { return std::string(MODULA_FIXTURES) + "/" + rel; }

}  // namespace modula::testing
