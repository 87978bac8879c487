// Built without gloo's headers: no CPU process group.
#include "distributed_backend.h"
#include "modula/train/config.h"
#include "modula/util/error.h"

namespace modula::train::detail {

bool have_gloo() { return false; }

c10::intrusive_ptr<Group> make_gloo_group(const c10::intrusive_ptr<c10d::Store>&, const DistributedOptions&) {
  throw_error<TrainError>(kDistTag,
                          "this modula was built without gloo's headers: install libgloo-dev (scripts/setup.sh) "
                          "and rebuild for the gloo backend");
}

}  // namespace modula::train::detail
