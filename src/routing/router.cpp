#include "modula/routing/router.h"

#include <stdexcept>

#include "modula/util/error.h"

namespace modula {

void RoutingContext::set(const std::string& key, torch::Tensor ids) {
  if (!ids.defined() || ids.dim() != 1)
    throw_error("routing", "metadata '" + key + "' must be a 1-D tensor of ids, one per row");
  if (ids.is_floating_point()) throw_error("routing", "metadata '" + key + "' must hold integer ids");
  metadata_[key] = ids.to(torch::kLong);
}

const torch::Tensor& RoutingContext::get(const std::string& key) const {
  auto it = metadata_.find(key);
  if (it != metadata_.end()) return it->second;
  std::string present;
  for (const auto& [k, v] : metadata_) present += (present.empty() ? "" : ", ") + k;
  throw_error("routing",
              "no metadata '" + key + "' set for this batch (present: " + (present.empty() ? "none" : present) + ")");
}

torch::Tensor collect_aux_loss(torch::nn::Module& model) {
  torch::Tensor total;
  for (const auto& m : model.modules(/*include_self=*/true))
    if (auto r = std::dynamic_pointer_cast<RouterImpl>(m); r && r->aux_loss.defined())
      total = total.defined() ? total + r->aux_loss : r->aux_loss;
  return total.defined() ? total : torch::zeros({});
}

}  // namespace modula
