// Activation checkpointing of one layer (Backbone::run_layer), the reentrant formulation:
// the forward runs the layer without autograd and keeps its input; the backward runs it
// again with autograd, from the same random state, and backpropagates through that copy.
// Gradients reach every leaf the layer's output depends on (its weights, its modules, a
// router shared with other layers, a prefix computed upstream) exactly once.
#include <mutex>

#include "modula/backbone/backbone.h"

namespace modula {
namespace {

using LayerFn = std::function<torch::Tensor(const torch::Tensor&)>;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

struct LayerHolder : torch::CustomClassHolder {
  explicit LayerHolder(LayerFn f) : fn(std::move(f)) {}
  LayerFn fn;
};

at::Tensor rng_state(const torch::Device& device) {
  auto gen = at::globalContext().defaultGenerator(device);
  std::lock_guard<std::mutex> lock(gen.mutex());
  return gen.get_state();
}

void set_rng_state(const torch::Device& device, const at::Tensor& state) {
  auto gen = at::globalContext().defaultGenerator(device);
  std::lock_guard<std::mutex> lock(gen.mutex());
  gen.set_state(state);
}

struct LayerCheckpoint : torch::autograd::Function<LayerCheckpoint> {
  // `anchor`: a scalar that requires grad, so that this node exists (and the layer's own
  // weights get their gradients) even when h does not require grad.
  static torch::Tensor forward(AutogradContext* ctx, const LayerFn* layer, const torch::Tensor& h,
                               const torch::Tensor& anchor) {
    ctx->saved_data["layer"] = c10::IValue::make_capsule(c10::make_intrusive<LayerHolder>(*layer));
    ctx->saved_data["rng"] = rng_state(h.device());
    ctx->saved_data["h_requires_grad"] = h.requires_grad();
    ctx->save_for_backward({h});
    return (*layer)(h);  // autograd is off in a custom function's forward
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad) {
    auto holder = c10::static_intrusive_pointer_cast<LayerHolder>(ctx->saved_data["layer"].toCapsule());
    auto h = ctx->get_saved_variables()[0].detach().requires_grad_(ctx->saved_data["h_requires_grad"].toBool());
    const auto device = h.device();
    auto now = rng_state(device);
    set_rng_state(device, ctx->saved_data["rng"].toTensor());  // dropout draws the same masks
    torch::Tensor y;
    {
      torch::AutoGradMode on(true);
      y = holder->fn(h);
    }
    set_rng_state(device, now);
    if (y.requires_grad())  // graph kept: a part upstream of the layer (a prefix, a router) may be reached again
      torch::autograd::backward({y}, {grad[0]}, /*retain_graph=*/true);
    return {torch::Tensor(), h.requires_grad() ? h.grad() : torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

torch::Tensor Backbone::run_layer(const LayerFn& layer, const torch::Tensor& h, bool cached) {
  if (!checkpoint_layers_ || cached || !torch::GradMode::is_enabled()) return layer(h);
  auto anchor = torch::zeros({}, h.options().dtype(torch::kFloat)).requires_grad_();
  return LayerCheckpoint::apply(&layer, h, anchor);
}

}  // namespace modula
