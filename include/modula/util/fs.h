// Plain POSIX file-system helpers. modula does not use std::filesystem: pip's CUDA
// libtorch 2.x exports its own copies of std::filesystem functions, which interpose on
// libstdc++'s and crash (remove_all, create_directories, temp_directory_path seen).
// Errors throw std::runtime_error with "[fs] <op> <path>: <strerror>".
#pragma once

#include <string>
#include <vector>

namespace modula::fs {

bool exists(const std::string& p);
bool is_dir(const std::string& p);
bool is_file(const std::string& p);
std::string join(const std::string& a, const std::string& b);    // "a/b"
std::string parent(const std::string& p);                        // "a/b/c" -> "a/b"; "c" -> "."
std::string filename(const std::string& p);                      // "a/b/c.json" -> "c.json"
std::string extension(const std::string& p);                     // ".json" or ""
void make_dirs(const std::string& p);                            // mkdir -p
void remove_tree(const std::string& p) noexcept;                 // rm -rf, ignores errors
void rename(const std::string& from, const std::string& to);     // atomic on one file system
void copy_file(const std::string& from, const std::string& to);  // overwrites, via to.tmp + rename
// `text` into path.tmp, then renamed over `path`: a killed process or a full disk never leaves
// a truncated `path`. Throws std::runtime_error "[fs] ..." naming the file.
void write_file(const std::string& path, const std::string& text);
std::string make_temp_dir(const std::string& prefix);  // under $TMPDIR or /tmp
// Sorted paths of every regular file named `name` under `root` (recursive).
std::vector<std::string> find_files(const std::string& root, const std::string& name);
// Sorted names (not paths) of the entries of `dir`, "." and ".." left out; throws naming it.
std::vector<std::string> list_dir(const std::string& dir);
// The whole file; throws std::runtime_error "[fs] open <path>: ..." when it cannot be read.
std::string read_file(const std::string& path);
std::string executable_dir();  // folder of /proc/self/exe, "" if unknown

}  // namespace modula::fs
