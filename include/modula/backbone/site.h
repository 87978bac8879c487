// A site is a place in the backbone where modules attach. Two kinds:
//
// Linear sites (every projection, named by its HF path such as
// "model.layers.0.self_attn.q_proj") accept SiteModules that transform the layer's
// input and/or output:
//
//   y = W · in(x) + b,  then  y ← out(x, y)  for each attached, enabled, unmerged module
//
// LoRA adds B·A·x to y, (IA)³ scales y (or x for feed-forward layers), DoRA rescales.
//
// Block sites (a whole sub-layer: "model.layers.0.self_attn", "transformer.h.0.mlp",
// "bert.encoder.layer.0.output") see the sub-layer input x (after the pre-LN for pre-LN
// models) and its output y (before the residual add):
//
//   y ← block(x, y)  for each attached, enabled module
//
// Bottleneck adapters (Houlsby et al. 2019; He et al. 2022) live there.
#pragma once

#include <torch/torch.h>

#include <string>
#include <vector>

namespace modula {

class LinearImpl;

enum class SiteKind { Linear, Block };
std::string to_string(SiteKind kind);

class SiteModule : public torch::nn::Module {
 public:
  // The kind of site the module attaches to (attach() rejects the other kind).
  virtual SiteKind site_kind() const { return SiteKind::Linear; }
  // Linear sites: applied to the layer input before the base weight (default: identity).
  virtual torch::Tensor transform_input(const torch::Tensor& x) { return x; }
  // Whether transform_input is not the identity (sites that share one GEMM need the same input).
  virtual bool transforms_input() const { return false; }
  // Linear sites: the new layer output given the original input x [..,in] and output y [..,out].
  virtual torch::Tensor transform_output(const torch::Tensor& x, const torch::Tensor& y, const LinearImpl& base) {
    return y;
  }
  // Block sites: the new sub-layer output given its input x [..,H] and output y [..,H].
  virtual torch::Tensor transform_block(const torch::Tensor& x, const torch::Tensor& y) { return y; }
  // Block sites: true when transform_block computes the block output from x alone and
  // ignores y (a mixture-of-experts FFN replacing the feed-forward). When such a module is
  // the first active one, the site skips the base sub-layer and passes an undefined y.
  virtual bool replaces_block() const { return false; }
  // Whether merge() can fold the module into the base weights (non-linear modules cannot).
  virtual bool mergeable() const { return true; }
  // Folds the module into the base weights / restores them (merge then unmerge restores
  // the base weights to float rounding).
  virtual void merge(LinearImpl& base) = 0;
  virtual void unmerge(LinearImpl& base) = 0;
  // Parameter count of the module (what training updates).
  int64_t num_trainable() const {
    int64_t n = 0;
    for (const auto& p : parameters()) n += p.numel();
    return n;
  }
  // Takes part in the forward pass: enabled and not folded into the weights.
  bool active() const { return enabled && !merged; }

  bool enabled = true;  // off: the site behaves as if the module were absent
  double scale = 1.0;   // strength: LoRA scales its delta, (IA)³ interpolates 1 + scale·(l − 1)
  bool merged = false;  // folded into the base weights: skipped in forward
};

// The attach/detach bookkeeping of a site, mixed into the torch::nn::Module that is the
// site (LinearImpl, BlockSite). Attached modules are registered under the site as
// "adapters.<name>", so their parameters are "<site>.adapters.<name>.<param>".
class SiteHost {
 public:
  explicit SiteHost(SiteKind kind) : kind_(kind) {}
  virtual ~SiteHost() = default;

  // Attaches by name (no dots); the module follows the site's train/eval mode.
  // Throws std::invalid_argument if the name is taken or the module's kind differs.
  void attach(const std::string& name, std::shared_ptr<SiteModule> module);
  // Throws std::invalid_argument if absent or still merged.
  void detach(const std::string& name);
  std::shared_ptr<SiteModule> module(const std::string& name) const;  // nullptr if absent
  const std::vector<std::string>& module_names() const { return names_; }
  const std::vector<std::shared_ptr<SiteModule>>& site_modules() const { return modules_; }
  bool has_modules() const { return !modules_.empty(); }
  SiteKind site_kind() const { return kind_; }
  // The torch::nn::Module this host is mixed into.
  torch::nn::Module& owner();

 private:
  SiteKind kind_;
  std::shared_ptr<torch::nn::Module> adapters_;  // registered lazily as "adapters"
  std::vector<std::string> names_;
  std::vector<std::shared_ptr<SiteModule>> modules_;
};

}  // namespace modula
