// Sparse fine-tuning (parameter composition, survey §3.1): a sparse difference φ over
// chosen backbone parameters, θ = θ₀ + φ, with a fixed mask (Ansell et al. 2022,
// "Composable Sparse Fine-Tuning for Cross-Lingual Transfer", LT-SFT).
//
// Per target parameter p (HF name, e.g. "model.layers.0.mlp.down_proj.weight"):
//   indices [K_p] int64, flat positions into p (sorted, unique, fixed)
//   values  [K_p] float32, trainable
// K = Σ K_p entries in all. Diffs compose by addition: θ₀ + φ₁ + φ₂. LT-SFT, which learns
// the mask and the values, is a training procedure: modula/train/lt_sft.h.
//
//   auto diff = load_sparse_diff(*model, "out/sft");
//   diff->apply(*model);  ...  diff->remove(*model);
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "modula/backbone/backbone.h"

namespace modula {

// Parameter selection shared by parameter-composition modules. A pattern matches a
// parameter name when it equals it, when the name ends with "." + pattern, or, written
// "re:<regex>", when the regex matches the whole name.
bool matches_parameter(const std::string& pattern, const std::string& name);

// Backbone weights (parameters of attached modules, "<site>.adapters.*", left out) whose
// names match a pattern of `targets` and none of `exclude`, in module order. Throws
// std::invalid_argument starting with `tag` for an invalid regex or a target pattern
// that matches no parameter.
std::vector<std::pair<std::string, torch::Tensor>> select_parameters(Backbone& model,
                                                                     const std::vector<std::string>& targets,
                                                                     const std::vector<std::string>& exclude = {},
                                                                     const std::string& tag = "[sparse_ft]");

struct SparseDiffOptions {
  // Which parameters φ covers (patterns as matches_parameter); must not be empty.
  TORCH_ARG(std::vector<std::string>, target_parameters);
  TORCH_ARG(std::vector<std::string>, exclude_parameters);
  // Fraction of the chosen entries kept, in (0, 1]; used when k == 0.
  TORCH_ARG(double, density) = 0.01;
  // Absolute number of entries kept (over all chosen parameters jointly); 0 = use density.
  TORCH_ARG(int64_t, k) = 0;
  TORCH_ARG(std::string, base_model_name_or_path);

 public:  // TORCH_ARG leaves the section private
  // Throws std::invalid_argument naming the bad field.
  void validate() const;
  // K for `total` chosen entries: k, or max(1, round(density · total)). Throws
  // std::invalid_argument when k exceeds total.
  int64_t num_entries(int64_t total) const;
};

class SparseDiffImpl : public torch::nn::Module {
 public:
  explicit SparseDiffImpl(SparseDiffOptions options = {});
  // Restores θ₀ if still attached.
  ~SparseDiffImpl() override;

  // Adds the entries of one parameter: flat `indices` [K_p] into a tensor of `shape`,
  // `values` [K_p] (zeros when undefined). Registered as "<name>.sft_indices" (buffer)
  // and "<name>.sft_values" (parameter). Indices are sorted; throws std::invalid_argument
  // for a duplicate name, out-of-range or repeated indices, or a length mismatch.
  void add(const std::string& name, std::vector<int64_t> shape, torch::Tensor indices, torch::Tensor values = {});

  std::vector<std::string> names() const;  // target parameters, in the order added
  bool contains(const std::string& name) const;
  torch::Tensor indices(const std::string& name) const;  // [K_p] int64
  torch::Tensor values(const std::string& name) const;   // [K_p] float32, shares storage
  const std::vector<int64_t>& shape(const std::string& name) const;
  // φ for one parameter as a dense tensor of its shape.
  torch::Tensor dense(const std::string& name) const;
  int64_t num_trainable() const;  // K = Σ K_p
  int64_t num_chosen() const;     // Σ numel(p) over the target parameters

  // θ ← θ + scale·φ / θ ← θ − scale·φ, in place without autograd. remove() after apply()
  // restores θ₀ to float rounding. Throws std::invalid_argument (unknown parameter,
  // shape mismatch) or std::logic_error while attached.
  void apply(Backbone& model, double scale = 1.0);
  void remove(Backbone& model, double scale = 1.0);
  // Folds φ into the weights for good (detaches first if attached to `model`).
  void merge(Backbone& model);

  // Differentiable path: the target parameters become θ₀ + scatter(values) in every
  // forward, gradients reach only `values`, and the target parameters are frozen.
  // Design: "in-place re-parameterisation". A Backbone reads its weights through
  // member tensors that share one TensorImpl with the registered parameter, so
  // refresh() writes θ₀[idx] + values into the parameter with the differentiable
  // in-place `put_`: the frozen leaf becomes a non-leaf whose grad_fn leads to `values`
  // (d loss/d values = (d loss/d θ)[idx], exact), and every reader sees it. θ₀ is kept
  // only at the K indices. Call refresh() (or forward()) after each optimizer step,
  // before the next forward; detach() makes the parameters leaves holding θ₀ again.
  // One attached diff per parameter at a time (std::logic_error otherwise).
  void attach(Backbone& model);
  void refresh();
  void detach();
  bool attached() const { return model_ != nullptr; }
  // refresh() then model.forward(in); needs attach(model).
  BackboneOutput forward(Backbone& model, const BackboneInput& in);

  SparseDiffOptions options;

 private:
  struct Entry {
    std::string name;
    std::vector<int64_t> shape;
    torch::Tensor indices, values;
  };
  struct Attached {
    const Entry* entry;
    torch::Tensor param;  // shares the backbone parameter's TensorImpl
    torch::Tensor base;   // θ₀ at the entry's indices, parameter dtype
    bool requires_grad;   // restored by detach()
  };
  const Entry& entry(const std::string& name) const;
  void add_scaled(Backbone& model, double scale);

  std::vector<Entry> entries_;
  std::vector<Attached> attached_;
  Backbone* model_ = nullptr;
};
TORCH_MODULE(SparseDiff);

// Σ scale_i · φ_i as one diff over the union of entries (scales default to 1).
SparseDiff compose(const std::vector<SparseDiff>& diffs, const std::vector<double>& scales = {});
// Applies / removes several diffs in turn: θ₀ + φ₁ + φ₂ + ...
void apply_all(Backbone& model, const std::vector<SparseDiff>& diffs);
void remove_all(Backbone& model, const std::vector<SparseDiff>& diffs);

// A diff with a uniformly random mask of K entries over the selected parameters,
// values zero (the random-mask baseline; also a test helper). Seeded.
SparseDiff random_sparse_diff(Backbone& model, const SparseDiffOptions& options, uint64_t seed);

// The mask of the K entries of largest |δ| over all `deltas` jointly (LT-SFT's
// selection), δ given per parameter name; values = δ there when keep_values, else 0.
SparseDiff sparse_diff_from_delta(const std::vector<std::pair<std::string, torch::Tensor>>& deltas,
                                  const SparseDiffOptions& options, bool keep_values = false);

// Folder format (docs: "MODULA_SPARSE_FT"), in the layout of PEFT adapters:
//   adapter_config.json  {"peft_type": "MODULA_SPARSE_FT", "target_parameters": [...],
//                         "exclude_parameters": [...], "density": d, "k": k,
//                         "num_entries": K, "parameter_shapes": {"<param>": [..]},
//                         "base_model_name_or_path": "..."}
//   adapter_model.safetensors  "<param>.sft_indices" I64 [K_p] (sorted, unique),
//                              "<param>.sft_values"  F32 [K_p]
void save_sparse_diff(const SparseDiff& diff, const std::string& dir);
// Loads and validates against `model`: unknown parameter, index out of range or
// repeated, shape mismatch, missing partner tensor, wrong dtype/peft_type give a
// std::runtime_error naming the file and key. Tensors are placed on the model's device.
SparseDiff load_sparse_diff(Backbone& model, const std::string& dir);

}  // namespace modula
