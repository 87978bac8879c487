// ProcessGroupNCCL (GPU collectives). Compiled when the libtorch has CUDA and NCCL.
#define USE_C10D_NCCL 1
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>

#include "distributed_backend.h"
#include "modula/train/config.h"
#include "modula/util/error.h"

namespace modula::train::detail {

bool have_nccl() { return true; }

c10::intrusive_ptr<Group> make_nccl_group(const c10::intrusive_ptr<c10d::Store>& store, const DistributedOptions& o) {
  auto opts = c10d::ProcessGroupNCCL::Options::create();
  opts->timeout = std::chrono::milliseconds(static_cast<int64_t>(o.timeout_s * 1000.0));
  try {
    return c10::make_intrusive<c10d::ProcessGroupNCCL>(store, o.rank, o.world_size, opts);
  } catch (const std::exception& e) {
    throw_error<TrainError>(kDistTag, "rank " + std::to_string(o.rank) + ": nccl: " + short_what(e));
  }
}

}  // namespace modula::train::detail
