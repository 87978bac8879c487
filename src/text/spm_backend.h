// The interface of the SentencePiece shim (libmodula_spm.so). libsentencepiece bundles
// its own protobuf-lite, whose exported symbols clash with the libprotobuf that
// libtorch loads (a crash at start-up when both sit in one process). The shim links
// libsentencepiece and is dlopen()ed with RTLD_LOCAL | RTLD_DEEPBIND, so each keeps
// its own protobuf. Only virtual calls and one extern "C" factory cross the boundary.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace modula::text {

class SpmBackend {
 public:
  virtual ~SpmBackend() = default;
  // Each returns "" on success, else the library's error text.
  virtual std::string load(const std::string& path) = 0;
  virtual std::string encode(const std::string& text, std::vector<int>* ids) const = 0;
  virtual std::string decode(const std::vector<int>& ids, std::string* text) const = 0;
  virtual int piece_size() const = 0;
  virtual int piece_to_id(const std::string& piece) const = 0;
  virtual std::string id_to_piece(int id) const = 0;
};

}  // namespace modula::text

extern "C" {
// Factory exported by the shim; the caller deletes the backend.
modula::text::SpmBackend* modula_spm_create();
}
