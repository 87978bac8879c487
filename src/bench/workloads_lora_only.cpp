// lora_only: the LoRA delta at one Linear site without the base matmul, s · B (A x): one
// adapter against 16 adapters in one batch through the LoRA bank (LoraBankImpl::selected),
// the bank in the activations' dtype and stored in bfloat16 and (CPU sizes) int8,
// prefill-shaped and decode-shaped; the base matmul x Wᵀ beside them for scale.
#include "bench/bench_internal.h"
#include "modula/composition/lora_bank.h"
#include "modula/util/dtype.h"

namespace modula::bench {
namespace {

constexpr int64_t kLoraOnlyBenchAdapters = 16;

}  // namespace

std::vector<Measurement> bench_lora_only(const BenchContext& ctx) {
  namespace F = torch::nn::functional;
  const int64_t features = ctx.quick() ? 64 : ctx.gpu() ? 1024 : 512, r = adapter_rank(ctx.size);
  const int64_t rows = ctx.gpu() ? 32 : 16, prefill_tokens = ctx.quick() ? 4 : ctx.gpu() ? 256 : 64;
  torch::NoGradGuard no_grad;
  torch::manual_seed(ctx.seed + 4);
  auto bank = LoraBank(LoraBankOptions(features, features, kLoraOnlyBenchAdapters).r(r).alpha(2.0 * r));
  bank->to(ctx.device, ctx.dtype);
  bank->lora_B.normal_(0, 0.02);  // PEFT init has B = 0: a zero delta would hide errors
  // The same modules stored in bfloat16 and int8 (LoraBankImpl::store_as).
  struct Stored {
    std::string name;
    torch::ScalarType dtype;
    LoraBank bank;
  };
  std::vector<Stored> stored;
  for (const auto& [name, dtype] : stored_variants(ctx)) {
    auto copy = LoraBank(LoraBankOptions(features, features, kLoraOnlyBenchAdapters).r(r).alpha(2.0 * r));
    copy->to(ctx.device, ctx.dtype);
    copy->lora_A.copy_(bank->lora_A), copy->lora_B.copy_(bank->lora_B), copy->scaling.copy_(bank->scaling);
    copy->store_as(dtype);
    stored.push_back({name, dtype, copy});
  }
  const size_t per_shape = 3 + stored.size();  // base, single, mixed16, the stored banks
  auto weight = torch::randn({features, features}, ctx.float_options()) / std::sqrt(static_cast<double>(features));
  auto A0 = bank->lora_A[0], B0 = bank->lora_B[0];
  const double s0 = bank->scaling[0].item<double>();
  auto idx = (torch::arange(rows, ctx.long_options()) % kLoraOnlyBenchAdapters).unsqueeze(1);  // [N, 1]
  auto w = torch::ones({rows, 1}, ctx.float_options());

  const std::vector<int64_t> shapes = {prefill_tokens, 1};
  std::vector<torch::Tensor> inputs;
  for (auto tokens : shapes) inputs.push_back(torch::randn({rows, tokens, features}, ctx.float_options()));
  std::vector<Variant> variants;
  for (const auto& x : inputs) {
    variants.push_back({"base", [&x, &weight] { F::linear(x, weight); }});
    variants.push_back({"single", [&x, &A0, &B0, s0] { s0* F::linear(F::linear(x, A0), B0); }});
    variants.push_back({"mixed16", [&x, &bank, &idx, &w] { bank->selected({x, {}, nullptr}, idx, w); }});
    for (auto& st : stored)
      variants.push_back({st.name, [&x, &b = st.bank, &idx, &w] { b->selected({x, {}, nullptr}, idx, w); }});
  }
  auto t = time_round_robin(variants, ctx);

  std::vector<Measurement> out;
  for (size_t i = 0; i < variants.size(); ++i) {
    const int64_t tokens = shapes[i / per_shape];
    const auto n = static_cast<double>(rows * tokens), f = static_cast<double>(features);
    const bool base = variants[i].name == "base";
    const double flops = base ? 2 * n * f * f : 2 * n * static_cast<double>(r) * 2 * f;
    out.push_back(measurement(ctx, "lora_only", variants[i].name, dims(rows, tokens) + " tokens", t[i], n, flops));
    out.back().note = std::to_string(features) + "x" + std::to_string(features) + " site, " +
                      (base ? std::string("x W^T alone") : "LoRA r" + std::to_string(r) + " delta alone") +
                      "; FLOPs: 2 per multiply-add of the matmuls";
  }
  // The mixed delta against each row's adapter alone: s_m · B_m (A_m x_n).
  for (size_t k = 0; k < inputs.size(); ++k) {
    const auto& x = inputs[k];
    std::vector<torch::Tensor> reference;
    for (int64_t n = 0; n < rows; ++n) {
      const int64_t a = n % kLoraOnlyBenchAdapters;
      reference.push_back(bank->scaling[a].item<double>() *
                          F::linear(F::linear(x[n], bank->lora_A[a]), bank->lora_B[a]));
    }
    for (size_t v = 2; v < per_shape; ++v) {
      auto& b = v == 2 ? bank : stored[v - 3].bank;
      auto mixed = b->selected({x, {}, nullptr}, idx, w).to(torch::kFloat32);
      auto& m = out[k * per_shape + v];
      m.error = (mixed - torch::stack(reference).to(torch::kFloat32)).abs().max().item<double>();
      m.reference = "each row's delta with its own adapter alone (max abs diff)";
      m.note += std::string("; row i uses adapter i % 16 (LoraBankImpl::selected: ") +
                (x.size(1) == 1 ? "the BGMV decode kernel reads each row's A and B from the bank)"
                                : "two GEMMs per row on the bank's A_m and B_m)");
      if (v > 2) m.note += "; the bank stored in " + dtype_name(stored[v - 3].dtype) + " (error: its rounding)";
    }
  }
  compare_to(out, "single");
  return out;
}

}  // namespace modula::bench
