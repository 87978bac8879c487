// Built without the NCCL backend (a CPU libtorch, or MODULA_NCCL off): no NCCL process group.
#include "distributed_backend.h"
#include "modula/train/config.h"
#include "modula/util/error.h"

namespace modula::train::detail {

bool have_nccl() { return false; }

c10::intrusive_ptr<Group> make_nccl_group(const c10::intrusive_ptr<c10d::Store>&, const DistributedOptions&) {
  throw_error<TrainError>(kDistTag,
                          "backend nccl: this modula was built without NCCL (a CPU libtorch, or -DMODULA_NCCL=OFF); "
                          "use --backend gloo");
}

}  // namespace modula::train::detail
