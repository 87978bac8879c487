// A bank of M LoRA modules for one Linear site, stacked as tensors so that any routing
// over them is one batched kernel (survey §3 computation function, §5 aggregation):
//
//   lora_A [M, r, in], lora_B [M, out, r], scaling [M]      (module m: s_m · B_m A_m)
//
// Modules of smaller rank are zero-padded to r; absent modules have zeros and s = 0.
// x is [N, T, in] (N rows, T positions); every result is [N, T, out].
#pragma once

#include <torch/torch.h>

#include <optional>

#include "modula/modules/lora.h"
#include "modula/routing/algorithm1.h"

namespace modula {

struct LoraBankOptions {
  LoraBankOptions(int64_t in, int64_t out, int64_t num_modules)
      : in_features_(in), out_features_(out), num_modules_(num_modules) {}
  TORCH_ARG(int64_t, in_features);
  TORCH_ARG(int64_t, out_features);
  TORCH_ARG(int64_t, num_modules);
  TORCH_ARG(int64_t, r) = 8;
  TORCH_ARG(double, alpha) = 8.0;  // every module starts with s = alpha / r

 public:
  void validate() const;  // std::invalid_argument naming the bad field
};

class LoraBankImpl : public torch::nn::Module, public ModuleBank {
 public:
  // PEFT init per module: A kaiming-uniform(a = sqrt 5), B = 0.
  explicit LoraBankImpl(const LoraBankOptions& options);
  // Stacks existing LoRA modules (null = absent); ranks may differ, shapes must agree.
  // Throws std::invalid_argument naming the module index for DoRA or a shape mismatch.
  static std::shared_ptr<LoraBankImpl> stack(const std::vector<std::shared_ptr<LoraImpl>>& modules);
  // A bank over modules that stay where they are (a route(...) over attached adapters):
  // lora_A/lora_B/scaling are re-stacked from the members at every call with autograd, so
  // gradients reach the members' own parameters, and without autograd whenever a member's
  // tensors or scale changed. The bank registers no parameters. Same checks as stack().
  static std::shared_ptr<LoraBankImpl> view(const std::vector<std::shared_ptr<LoraImpl>>& modules);

  // Hard routing: Σ_k w[n,k] s_i B_i A_i x_n with i = idx[n,k] (idx -1 = none, weight 0).
  // Per example (idx/w [N, k]) gathers only the k routed modules per row; per token
  // ([N, T, k]) runs `mixed` with the dense weights (one matmul over M·r ranks). One
  // module per row (k = 1) on the CPU without autograd reads A and B straight from the bank
  // instead of gathering copies (modules/lora_kernels.h): a BGMV kernel for one token per row
  // (fp32), two GEMMs per row for longer rows.
  torch::Tensor selected(const SiteInput& in, const torch::Tensor& idx, const torch::Tensor& w) override;
  // Soft routing, weighted sum of module outputs: Σ_m w[..,m] s_m B_m A_m x, w [N, M] or
  // [N, T, M]; two matmuls over all M·r ranks at once.
  torch::Tensor mixed(const SiteInput& in, const torch::Tensor& w) override;
  // Parameter aggregation, SMEAR (Muqeeth et al. 2023): per example the merged module
  // (Σ_m w_m s_m B_m)(Σ_m w_m A_m), w [N, M], then one bmm.
  torch::Tensor averaged(const SiteInput& in, const torch::Tensor& w) override;
  // The merged module of `averaged` for weights w [N, M]: A [N, r, in], B [N, out, r].
  std::pair<torch::Tensor, torch::Tensor> averaged_module(const torch::Tensor& w) const;
  std::string kind() const override { return "lora bank"; }

  // Keeps lora_A and lora_B in `dtype` (float32, bfloat16, float16 or int8) whatever the
  // activations' dtype: bfloat16 halves the memory and what each decode step reads per row's
  // module, int8 quarters it (symmetric, one scale per matrix row: lora_A_scale [M, r],
  // lora_B_scale [M, out], W ≈ scale · q). Every path computes in the input's dtype (the CPU
  // decode kernel widens as it reads; the others convert or dequantize what they select);
  // scaling stays as it is. int8 is for inference: its weights stop training (a later
  // store_as(float) gives back the rounded weights, trainable as before); with autograd a view bank stacks
  // its members unquantized. View banks store each re-stacked copy so. A later to(dtype) of
  // the bank converts it like any parameter (an int8 bank converted so refuses to run).
  // Throws std::invalid_argument for other dtypes or (int8) for NaN/Inf weights.
  void store_as(torch::ScalarType dtype);

  int64_t num_modules() const override { return lora_A.size(0); }
  int64_t rank() const { return lora_A.size(1); }
  int64_t in_features() const { return lora_A.size(2); }
  int64_t out_features() const { return lora_B.size(1); }

  torch::Tensor lora_A, lora_B, scaling;  // scaling is a buffer (not trained)
  // Stored as int8: the row scales (buffers); undefined before, empty after a store_as back to float.
  torch::Tensor lora_A_scale, lora_B_scale;

 private:
  LoraBankImpl() = default;
  void sync();  // view banks: re-stack from the members (without autograd: only when they changed)
  bool synced_current() const;
  std::vector<std::shared_ptr<LoraImpl>> members_;
  struct Synced {  // what the stacked copy was made from, per member
    torch::Tensor A, B;
    int64_t A_version = 0, B_version = 0;
    double scale = 0;
  };
  std::vector<Synced> synced_;
  int64_t view_rank_ = 0;
  std::optional<torch::ScalarType> storage_;  // store_as: the dtype of lora_A / lora_B
  bool trainable_ = true;                     // lora_A.requires_grad() before store_as(int8)
  void check_input(const torch::Tensor& x, const torch::Tensor& w, const char* what) const;
  bool int8() const { return lora_A.scalar_type() == torch::kChar; }
  void check_storage() const;  // refuses an int8 bank that to(dtype) converted since
  // lora_A / lora_B (the modules `rows`, or all) in `dtype`, dequantized when stored as int8.
  torch::Tensor A_as(torch::ScalarType dtype, const torch::Tensor& rows = {}) const;
  torch::Tensor B_as(torch::ScalarType dtype, const torch::Tensor& rows = {}) const;
  void set_int8(const torch::Tensor& A, const torch::Tensor& B);  // quantizes into lora_A/B and their scales
};
TORCH_MODULE(LoraBank);

}  // namespace modula
