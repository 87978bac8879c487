// ProcessGroupGloo (CPU collectives over TCP). Compiled when gloo's headers (libgloo-dev)
// are found; libtorch_cpu carries the implementation.
#define USE_C10D_GLOO 1  // ProcessGroupGloo.hpp declares nothing without it
#include <cstdlib>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>

#include "distributed_backend.h"
#include "modula/train/config.h"
#include "modula/util/error.h"

namespace modula::train::detail {

bool have_gloo() { return true; }

c10::intrusive_ptr<Group> make_gloo_group(const c10::intrusive_ptr<c10d::Store>& store, const DistributedOptions& o) {
  auto opts =
      c10d::ProcessGroupGloo::Options::create(std::chrono::milliseconds(static_cast<int64_t>(o.timeout_s * 1000.0)));
  // As torch.distributed: GLOO_SOCKET_IFNAME names the interface; a loopback master means
  // every rank is on this machine; otherwise the address this host name resolves to.
  const char* ifname = std::getenv("GLOO_SOCKET_IFNAME");
  const bool loopback = o.master_addr == "127.0.0.1" || o.master_addr == "localhost" || o.master_addr == "::1";
  try {
    if (ifname && *ifname)
      opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(ifname));
    else if (loopback)
      opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(o.master_addr));
    else
      opts->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
    return c10::make_intrusive<c10d::ProcessGroupGloo>(store, o.rank, o.world_size, opts);
  } catch (const std::exception& e) {
    throw_error<TrainError>(kDistTag, "rank " + std::to_string(o.rank) + ": gloo could not connect the " +
                                          std::to_string(o.world_size) + " ranks within " +
                                          std::to_string(static_cast<int64_t>(o.timeout_s)) + " s: " + short_what(e));
  }
}

}  // namespace modula::train::detail
