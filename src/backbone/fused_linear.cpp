#include "modula/backbone/fused_linear.h"

#include <numeric>

namespace modula {
namespace {

bool fusable(const std::vector<LinearImpl*>& sites) {
  if (sites.size() < 2) return false;
  const auto& w0 = sites.front()->weight;
  const bool needs_grad = torch::GradMode::is_enabled();
  for (const auto* s : sites) {
    const auto& w = s->weight;
    if (s->options.conv1d_layout() || s->transforms_input() || w.dim() != 2) return false;
    if (w.size(1) != w0.size(1) || w.scalar_type() != w0.scalar_type() || w.device() != w0.device()) return false;
    if (s->bias.defined() != sites.front()->bias.defined()) return false;
    if (needs_grad && w.requires_grad()) return false;
  }
  return true;
}

// Copies the weights into one [Σ out, in] tensor and points each weight at its rows.
void pack(const std::vector<LinearImpl*>& sites) {
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> ws;
  for (const auto* s : sites) ws.push_back(s->weight);
  auto packed = torch::cat(ws, 0);
  int64_t row = 0;
  for (auto* s : sites) {
    const int64_t out = s->weight.size(0);
    s->weight.set_data(packed.narrow(0, row, out));
    row += out;
  }
}

}  // namespace

bool weights_packed(const std::vector<LinearImpl*>& sites) {
  if (sites.empty()) return false;
  const auto& w0 = sites.front()->weight;
  int64_t offset = w0.storage_offset();
  for (const auto* s : sites) {
    const auto& w = s->weight;
    if (!w.is_contiguous() || !w.storage().is_alias_of(w0.storage()) || w.storage_offset() != offset) return false;
    offset += w.numel();
  }
  return true;
}

std::vector<torch::Tensor> project(const std::vector<LinearImpl*>& sites, const torch::Tensor& x) {
  std::vector<torch::Tensor> ys;
  if (!fusable(sites)) {
    for (auto* s : sites) ys.push_back(s->forward(x));
    return ys;
  }
  if (!weights_packed(sites)) pack(sites);
  std::vector<int64_t> outs;
  std::vector<torch::Tensor> biases;
  for (const auto* s : sites) {
    outs.push_back(s->weight.size(0));
    if (s->bias.defined()) biases.push_back(s->bias);
  }
  const auto& w0 = sites.front()->weight;
  const int64_t rows = std::accumulate(outs.begin(), outs.end(), int64_t{0}), in = w0.size(1);
  // The packed weight as a tensor of its own: no gradient reaches it (fusable() checked).
  auto weight = w0.detach().as_strided({rows, in}, {in, 1}, w0.storage_offset());
  auto bias = biases.empty() ? torch::Tensor() : torch::cat(biases, 0);
  // split_with_sizes: its backward is one concatenation, not a zero-filled tensor per part.
  ys = torch::nn::functional::linear(x, weight, bias).split_with_sizes(outs, -1);
  for (size_t i = 0; i < sites.size(); ++i) ys[i] = sites[i]->adapt_output(x, ys[i]);
  return ys;
}

}  // namespace modula
