// Fixed routing by metadata (survey §4.1): each row of the batch names its module through
// per-row ids in a RoutingContext (task id, language id, adapter index). One-hot, per example.
//
//   auto ctx = std::make_shared<modula::RoutingContext>();
//   auto router = modula::FixedRouter(modula::FixedRouterOptions(3).key("task"), ctx);
//   ctx->set("task", torch::tensor({2, 0, -1}));   // -1: no module for that row (PEFT "__base__")
//   auto r = router->route(x);                      // weights [3, 3] one-hot, indices [3, 1]
#pragma once

#include "modula/routing/router.h"

namespace modula {

struct FixedRouterOptions {
  explicit FixedRouterOptions(int64_t num_modules) : num_modules_(num_modules) {}
  TORCH_ARG(int64_t, num_modules);
  TORCH_ARG(std::string, key) = "task";  // the RoutingContext entry holding the ids

 public:
  void validate() const;  // std::invalid_argument naming the bad field
};

class FixedRouterImpl : public RouterImpl {
 public:
  FixedRouterImpl(const FixedRouterOptions& options, std::shared_ptr<RoutingContext> context);
  // Reads ids [N] from the context; throws std::invalid_argument naming the key when the
  // count differs from x.size(0) or an id is outside [-1, num_modules).
  Routing route(const torch::Tensor& x) override;
  int64_t num_modules() const override { return options.num_modules(); }

  FixedRouterOptions options;
  std::shared_ptr<RoutingContext> context;

 private:
  torch::Tensor checked_ids_;    // the id tensor last validated (skips re-checking every site's forward)
  int64_t checked_version_ = 0;  // its version counter then (an in-place change re-validates)
  Routing cached_;               // the routing of checked_ids_ (see route)
};
TORCH_MODULE(FixedRouter);

// Checks per-row ids against a batch of `rows` rows and `num_modules` modules (ids in
// [-1, num_modules) where -1 = none); the message names `key`.
void check_row_ids(const torch::Tensor& ids, const std::string& key, int64_t rows, int64_t num_modules);

}  // namespace modula
