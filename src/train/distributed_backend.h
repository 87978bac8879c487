// Internal: the c10d process group of a backend over a rendezvous store. Each backend lives
// in its own file; a backend this build lacks compiles a stub that throws (distributed_*_stub.cpp).
#pragma once

#include <torch/version.h>

#include <string>
#include <string_view>
#include <torch/csrc/distributed/c10d/Store.hpp>

#include "modula/train/distributed.h"

namespace modula::train::detail {

inline constexpr std::string_view kDistTag = "distributed";

}  // namespace modula::train::detail

// The collectives' interface: c10d::ProcessGroup in libtorch 1.x, c10d::Backend (which
// ProcessGroupGloo / ProcessGroupNCCL derive from) in 2.x; the calls modula makes are the same.
#if TORCH_VERSION_MAJOR >= 2
#include <torch/csrc/distributed/c10d/Backend.hpp>
namespace modula::train::detail {
using Group = c10d::Backend;
}
#else
#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
namespace modula::train::detail {
using Group = c10d::ProcessGroup;
}
#endif

namespace modula::train::detail {

c10::intrusive_ptr<Group> make_gloo_group(const c10::intrusive_ptr<c10d::Store>& store, const DistributedOptions& o);
c10::intrusive_ptr<Group> make_nccl_group(const c10::intrusive_ptr<c10d::Store>& store, const DistributedOptions& o);
bool have_gloo();
bool have_nccl();

// The message of a c10d / gloo failure without libtorch's backtrace, on one line.
std::string short_what(const std::exception& e);

}  // namespace modula::train::detail
