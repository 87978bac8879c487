// Routing functions (survey §4): which modules are active for an input, and how much.
//
//   Routing r = router->route(x);        // x: the site input [N, T, H]
//   r.weights  [N, M] per example or [N, T, M] per token, zeros for inactive modules
//   r.indices  [N(, T), k] the active modules of hard routing (undefined for soft routing)
//
// Routers that read metadata (task id, language id, adapter name per row) take it from a
// RoutingContext shared with the caller, set before each forward:
//
//   auto ctx = std::make_shared<modula::RoutingContext>();
//   ctx->set("task", torch::tensor({0, 2, 1}));   // row i uses task ids[i]
//
// Routers that add a training loss (MoE load balancing, z-loss) leave it in aux_loss after
// each forward; collect_aux_loss(model) sums them for the trainer.
#pragma once

#include <torch/torch.h>

#include <map>
#include <memory>
#include <string>

namespace modula {

struct Routing {
  torch::Tensor weights;  // [N, M] or [N, T, M]; dense over all M modules
  torch::Tensor indices;  // hard routing: [N, k] or [N, T, k] (int64); undefined for soft routing
  bool per_token() const { return weights.dim() == 3; }
};

// Per-row metadata for fixed routing. Tensors are [N] int64 (one id per row of the batch).
class RoutingContext {
 public:
  void set(const std::string& key, torch::Tensor ids);
  // Throws std::invalid_argument naming the key (and the keys present) when absent.
  const torch::Tensor& get(const std::string& key) const;
  bool has(const std::string& key) const { return metadata_.count(key) > 0; }
  void clear() {
    metadata_.clear();
    mask_ = torch::Tensor();
  }
  // Padding mask [N, S] (1 = real token) for routers that pool over positions (the
  // backbone's attention_mask); undefined = every position is real.
  void set_mask(torch::Tensor attention_mask) { mask_ = std::move(attention_mask); }
  const torch::Tensor& mask() const { return mask_; }

 private:
  std::map<std::string, torch::Tensor> metadata_;
  torch::Tensor mask_;
};

class RouterImpl : public torch::nn::Module {
 public:
  // Routes the site input x [N, T, H] over num_modules() modules.
  virtual Routing route(const torch::Tensor& x) = 0;
  virtual int64_t num_modules() const = 0;
  // Training loss this router added in its last forward (undefined when none).
  torch::Tensor aux_loss;
};

// Σ aux_loss over every RouterImpl in `model` (0-dim zero tensor when none has one).
torch::Tensor collect_aux_loss(torch::nn::Module& model);

}  // namespace modula
