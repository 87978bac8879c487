#include "modula/composition/lora_bank.h"

#include <cmath>
#include <stdexcept>

#include "modula/util/dtype.h"
#include "modula/util/error.h"
#include "modula/util/huge_pages.h"
#include "modules/lora_kernels.h"

namespace modula {
namespace {
constexpr std::string_view kLoraBankTag = "lora bank";

// Symmetric int8 per row of the last dimension: W ≈ scale · q, scale = max|W_row| / 127
// (1 for an all-zero row, e.g. rank padding). Refuses NaN/Inf, which would poison a whole row.
std::pair<torch::Tensor, torch::Tensor> quantize_rows(const torch::Tensor& W, const char* name) {
  auto w = W.detach().to(torch::kFloat);
  if (!torch::isfinite(w).all().item<bool>())
    throw_error(kLoraBankTag, std::string("store_as(int8): ") + name + " has NaN or Inf values");
  auto scale = w.abs().amax(-1) / 127.0;
  scale = torch::where(scale > 0, scale, torch::ones_like(scale));
  return {torch::round(w / scale.unsqueeze(-1)).clamp(-127, 127).to(torch::kChar), scale};
}

torch::Tensor dequantize(const torch::Tensor& q, const torch::Tensor& scale, torch::ScalarType dtype) {
  return (q.to(torch::kFloat) * scale.to(q.device(), torch::kFloat).unsqueeze(-1)).to(dtype);
}

}  // namespace

void LoraBankOptions::validate() const {
  if (in_features() <= 0 || out_features() <= 0)
    throw_error(kLoraBankTag, "in_features and out_features must be positive");
  if (num_modules() <= 0)
    throw_error(kLoraBankTag, "num_modules must be positive (got " + std::to_string(num_modules()) + ")");
  if (r() <= 0) throw_error(kLoraBankTag, "r must be positive (got " + std::to_string(r()) + ")");
  if (!std::isfinite(alpha())) throw_error(kLoraBankTag, "alpha must be finite");
}

LoraBankImpl::LoraBankImpl(const LoraBankOptions& o) {
  o.validate();
  lora_A = register_parameter("lora_A", torch::empty({o.num_modules(), o.r(), o.in_features()}));
  lora_B = register_parameter("lora_B", torch::zeros({o.num_modules(), o.out_features(), o.r()}));
  scaling = register_buffer("scaling", torch::full({o.num_modules()}, o.alpha() / static_cast<double>(o.r())));
  torch::NoGradGuard no_grad;
  for (int64_t m = 0; m < o.num_modules(); ++m) torch::nn::init::kaiming_uniform_(lora_A[m], std::sqrt(5.0));
}

// Checks the members and returns the largest rank.
static int64_t check_members(const std::vector<std::shared_ptr<LoraImpl>>& modules) {
  const LoraImpl* first = nullptr;
  int64_t r = 0;
  for (size_t m = 0; m < modules.size(); ++m) {
    const auto& lora = modules[m];
    if (!lora) continue;
    if (lora->options.use_dora())
      throw_error(kLoraBankTag,
                  "module " + std::to_string(m) +
                      " is DoRA, which also rescales the base layer's output (m / ||W + s B A||), not a delta a "
                      "bank can add; cannot route over it");
    if (!first) first = lora.get();
    if (lora->options.in_features() != first->options.in_features() ||
        lora->options.out_features() != first->options.out_features())
      throw_error(kLoraBankTag, "module " + std::to_string(m) + " maps " + std::to_string(lora->options.in_features()) +
                                    " -> " + std::to_string(lora->options.out_features()) + ", module 0 maps " +
                                    std::to_string(first->options.in_features()) + " -> " +
                                    std::to_string(first->options.out_features()));
    r = std::max(r, lora->options.r());
  }
  if (!first) throw_error(kLoraBankTag, "no modules to stack");
  return r;
}

std::shared_ptr<LoraBankImpl> LoraBankImpl::view(const std::vector<std::shared_ptr<LoraImpl>>& modules) {
  std::shared_ptr<LoraBankImpl> bank(new LoraBankImpl());
  bank->view_rank_ = check_members(modules);
  bank->members_ = modules;
  bank->sync();
  return bank;
}

// Whether a view bank's stacked copy still reflects its members: the same tensors (held in
// synced_, so no new tensor can take their place), unchanged in place, the same scale.
bool LoraBankImpl::synced_current() const {
  if (!lora_A.defined() || synced_.size() != members_.size()) return false;
  for (size_t m = 0; m < members_.size(); ++m) {
    const auto& l = members_[m];
    const auto& s = synced_[m];
    if (!l) continue;
    if (!s.A.is_same(l->lora_A) || !s.B.is_same(l->lora_B) || s.A_version != l->lora_A._version() ||
        s.B_version != l->lora_B._version() || s.scale != l->scale * l->options.scaling())
      return false;
  }
  return true;
}

void LoraBankImpl::sync() {
  if (members_.empty()) return;
  bool grad = false;  // a graph must reach the members: stack anew
  for (const auto& l : members_) grad = grad || (l && (l->lora_A.requires_grad() || l->lora_B.requires_grad()));
  grad = grad && torch::GradMode::is_enabled();
  // Inference: the copy is current (and not one stacked in a graph, which is re-stacked once
  // as a plain copy on huge pages).
  if (!grad && synced_current() && !lora_A.requires_grad()) return;
  const LoraImpl* first = nullptr;
  for (const auto& l : members_)
    if (l && !first) first = l.get();
  const int64_t r = view_rank_, in = first->options.in_features(), out = first->options.out_features();
  std::vector<torch::Tensor> A, B, s;
  auto opts = first->lora_A.options();
  for (const auto& l : members_) {
    const int64_t rm = l ? l->options.r() : 0;  // zero padding to r leaves B A unchanged
    A.push_back(l ? torch::constant_pad_nd(l->lora_A, {0, 0, 0, r - rm}) : torch::zeros({r, in}, opts));
    B.push_back(l ? torch::constant_pad_nd(l->lora_B, {0, r - rm}) : torch::zeros({out, r}, opts));
    s.push_back(torch::full({1}, l ? l->scale * l->options.scaling() : 0.0, opts));
  }
  lora_A = torch::stack(A), lora_B = torch::stack(B), scaling = torch::cat(s);
  if (storage_ == torch::kChar && !grad)
    set_int8(lora_A, lora_B);  // (with autograd: unquantized, in the graph)
  else if (storage_ && storage_ != torch::kChar)
    lora_A = lora_A.to(*storage_), lora_B = lora_B.to(*storage_);
  if (!grad) lora_A = on_huge_pages(lora_A), lora_B = on_huge_pages(lora_B);
  synced_.clear();
  for (const auto& l : members_)
    synced_.push_back(
        l ? Synced{l->lora_A, l->lora_B, l->lora_A._version(), l->lora_B._version(), l->scale * l->options.scaling()}
          : Synced{});
}

std::shared_ptr<LoraBankImpl> LoraBankImpl::stack(const std::vector<std::shared_ptr<LoraImpl>>& modules) {
  const int64_t r = check_members(modules);
  const LoraImpl* first = nullptr;
  for (const auto& l : modules)
    if (l && !first) first = l.get();
  auto M = static_cast<int64_t>(modules.size());
  auto opts = first->lora_A.options();
  std::shared_ptr<LoraBankImpl> bank(new LoraBankImpl());
  auto A = torch::zeros({M, r, first->options.in_features()}, opts);
  auto B = torch::zeros({M, first->options.out_features(), r}, opts);
  auto s = torch::zeros({M}, opts);
  torch::NoGradGuard no_grad;
  for (int64_t m = 0; m < M; ++m) {
    const auto& lora = modules[m];
    if (!lora) continue;
    int64_t rm = lora->options.r();  // zero padding to r leaves B A unchanged
    A[m].narrow(0, 0, rm).copy_(lora->lora_A);
    B[m].narrow(1, 0, rm).copy_(lora->lora_B);
    s[m] = lora->scale * lora->options.scaling();
  }
  bank->lora_A = bank->register_parameter("lora_A", on_huge_pages(A));
  bank->lora_B = bank->register_parameter("lora_B", on_huge_pages(B));
  bank->scaling = bank->register_buffer("scaling", s);
  return bank;
}

void LoraBankImpl::set_int8(const torch::Tensor& A, const torch::Tensor& B) {
  auto [qA, sA] = quantize_rows(A, "lora_A");
  auto [qB, sB] = quantize_rows(B, "lora_B");
  if (!members_.empty()) {  // a view: plain tensors, nothing registered
    lora_A = qA, lora_B = qB, lora_A_scale = sA, lora_B_scale = sB;
    return;
  }
  if (!int8()) trainable_ = lora_A.requires_grad();  // given back by a store_as to a float dtype
  lora_A.set_requires_grad(false), lora_B.set_requires_grad(false);
  lora_A.mutable_grad() = torch::Tensor(), lora_B.mutable_grad() = torch::Tensor();  // float grads of no use now
  lora_A.set_data(on_huge_pages(qA)), lora_B.set_data(on_huge_pages(qB));
  if (named_buffers(false).contains("lora_A_scale")) {
    lora_A_scale.set_data(sA), lora_B_scale.set_data(sB);
  } else {
    lora_A_scale = register_buffer("lora_A_scale", sA);
    lora_B_scale = register_buffer("lora_B_scale", sB);
  }
}

void LoraBankImpl::store_as(torch::ScalarType dtype) {
  if (dtype != torch::kFloat32 && dtype != torch::kBFloat16 && dtype != torch::kHalf && dtype != torch::kChar)
    throw_error(kLoraBankTag,
                "store_as: " + dtype_name(dtype) + " is not a storage dtype (float32, bfloat16, float16, int8)");
  if (!members_.empty()) {  // a view: the next sync stacks in dtype
    storage_ = dtype;
    synced_.clear();
    return;
  }
  check_storage();  // an int8 bank converted by to(dtype) holds bare integers: nothing to store
  torch::NoGradGuard no_grad;
  auto A = int8() ? A_as(torch::kFloat) : lora_A.detach(), B = int8() ? B_as(torch::kFloat) : lora_B.detach();
  if (dtype == torch::kChar) {
    set_int8(A, B);
  } else {
    const bool was_int8 = int8();
    lora_A.set_data(on_huge_pages(A.to(dtype)));
    lora_B.set_data(on_huge_pages(B.to(dtype)));
    if (was_int8) {
      lora_A.set_requires_grad(trainable_), lora_B.set_requires_grad(trainable_);
      lora_A_scale.set_data(torch::empty({0})), lora_B_scale.set_data(torch::empty({0}));
    }
  }
  storage_ = dtype;
}

void LoraBankImpl::check_storage() const {
  if (members_.empty() && storage_ == torch::kChar && !int8())
    throw_error(kLoraBankTag,
                "stored as int8 (store_as) and converted since by to(dtype): its values are no longer "
                "the weights; rebuild the bank from its modules");
}

torch::Tensor LoraBankImpl::A_as(torch::ScalarType dtype, const torch::Tensor& rows) const {
  check_storage();
  auto q = rows.defined() ? lora_A.index_select(0, rows) : lora_A;
  if (!int8()) return q.to(dtype);
  return dequantize(q, rows.defined() ? lora_A_scale.index_select(0, rows) : lora_A_scale, dtype);
}

torch::Tensor LoraBankImpl::B_as(torch::ScalarType dtype, const torch::Tensor& rows) const {
  auto q = rows.defined() ? lora_B.index_select(0, rows) : lora_B;
  if (!int8()) return q.to(dtype);
  return dequantize(q, rows.defined() ? lora_B_scale.index_select(0, rows) : lora_B_scale, dtype);
}

void LoraBankImpl::check_input(const torch::Tensor& x, const torch::Tensor& w, const char* what) const {
  if (x.dim() != 3 || x.size(2) != in_features())
    throw_error(kLoraBankTag, std::string(what) + ": input " + c10::str(x.sizes()) + ", expected [N, T, " +
                                  std::to_string(in_features()) + "]");
  if (w.size(0) != x.size(0))
    throw_error(kLoraBankTag, std::string(what) + ": routing weights " + c10::str(w.sizes()) + " for " +
                                  std::to_string(x.size(0)) + " rows");
}

torch::Tensor LoraBankImpl::selected(const SiteInput& in, const torch::Tensor& idx, const torch::Tensor& w) {
  sync();
  const auto& x = in.x;
  check_input(x, w, "selected");
  if (idx.dim() == 3) return mixed(in, dense_weights(idx, w, num_modules()));  // per token: one pass over M·r
  int64_t N = x.size(0), k = idx.size(1), r = rank();
  const bool autograd = torch::GradMode::is_enabled() &&
                        (x.requires_grad() || w.requires_grad() || lora_A.requires_grad() || lora_B.requires_grad());
  check_storage();
  const bool kernel_bank = detail::kernel_weights(lora_A) && lora_B.scalar_type() == lora_A.scalar_type();
  auto weights = [&] {  // what the CPU kernels read
    return detail::BankWeights{lora_A.contiguous(), lora_B.contiguous(),
                               int8() ? lora_A_scale.to(torch::kFloat).contiguous() : torch::Tensor(),
                               int8() ? lora_B_scale.to(torch::kFloat).contiguous() : torch::Tensor()};
  };
  if (k == 1 && x.size(1) == 1 && !autograd && kernel_bank && detail::cpu_float32({x, w, scaling}))  // decode
    return detail::lora_bgmv(x.contiguous(), weights(), scaling.contiguous(),
                             idx.reshape({N}).to(torch::kLong).contiguous(), w.reshape({N}).contiguous());
  auto flat = idx.clamp_min(0).reshape({-1});                                                     // [N·k]
  auto coef = (w * (idx >= 0) * scaling.index_select(0, flat).view({N, k})).to(x.scalar_type());  // [N, k]
  if (k == 1 && !autograd && x.is_cpu() && lora_A.is_cpu())  // prefill: two GEMMs per row on the bank's own A_m, B_m
    return detail::lora_row_gemms(x, weights(), coef.reshape({N}), idx.reshape({N}));
  const auto dtype = x.scalar_type();  // a bank stored in another dtype (bf16, int8) computes in x's
  if (k == 1) {                        // one module per row: no copies of B, the scale on the [N, T, r] activations
    auto h = torch::bmm(x, A_as(dtype, flat).transpose(1, 2)) * coef.view({N, 1, 1});
    return torch::bmm(h, B_as(dtype, flat).transpose(1, 2));
  }
  auto A = A_as(dtype, flat).view({N, k * r, in_features()});  // [N, k·r, in]
  auto B = B_as(dtype, flat).view({N, k, out_features(), r});  // [N, k, out, r]
  auto h = torch::bmm(x, A.transpose(1, 2)).view({N, -1, k, r}) * coef.view({N, 1, k, 1});
  return torch::bmm(h.view({N, -1, k * r}), B.permute({0, 1, 3, 2}).reshape({N, k * r, out_features()}));
}

torch::Tensor LoraBankImpl::mixed(const SiteInput& in, const torch::Tensor& w) {
  sync();
  const auto& x = in.x;
  check_input(x, w, "mixed");
  int64_t N = x.size(0), T = x.size(1), M = num_modules(), r = rank();
  if (w.size(-1) != M || (w.dim() == 3 && w.size(1) != T) || w.dim() < 2 || w.dim() > 3)
    throw_error(kLoraBankTag, "mixed: routing weights " + c10::str(w.sizes()) + ", expected [N, " + std::to_string(M) +
                                  "] or [N, " + std::to_string(T) + ", " + std::to_string(M) + "]");
  auto coef = (w * scaling).to(x.scalar_type());
  coef = w.dim() == 2 ? coef.view({N, 1, M, 1}) : coef.view({N, T, M, 1});
  const auto dtype = x.scalar_type();
  auto h = torch::matmul(x, A_as(dtype).reshape({M * r, in_features()}).t()).view({N, T, M, r}) * coef;
  return torch::matmul(h.view({N, T, M * r}), B_as(dtype).permute({0, 2, 1}).reshape({M * r, out_features()}));
}

std::pair<torch::Tensor, torch::Tensor> LoraBankImpl::averaged_module(const torch::Tensor& w) const {
  if (w.dim() != 2 || w.size(1) != num_modules())
    throw_error(kLoraBankTag, "parameter averaging needs per-example weights [N, " + std::to_string(num_modules()) +
                                  "], got " + c10::str(w.sizes()));
  // In the wider of the weights' and the bank's dtypes (a bf16 or int8 bank averages in float32).
  const auto dtype = torch::promote_types(w.scalar_type(), int8() ? torch::kFloat : lora_A.scalar_type());
  auto wA = w.to(dtype).unsqueeze(1);                                              // [N, 1, M]: one group
  auto A = average_parameters(wA, A_as(dtype).unsqueeze(0)).squeeze(1);            // Σ_m w_m A_m
  auto B = average_parameters(wA * scaling, B_as(dtype).unsqueeze(0)).squeeze(1);  // Σ_m w_m s_m B_m
  return {A, B};
}

torch::Tensor LoraBankImpl::averaged(const SiteInput& in, const torch::Tensor& w) {
  sync();
  const auto& x = in.x;
  check_input(x, w, "averaged");
  auto [A, B] = averaged_module(w);
  return torch::bmm(torch::bmm(x, A.transpose(1, 2).to(x.scalar_type())), B.transpose(1, 2).to(x.scalar_type()));
}

}  // namespace modula
