// train_lora: one LoRA r16 (alpha 32) all-linear training step, forward + causal-LM loss +
// backward + AdamW, through modula's training loop, as a bare libtorch step, and through the
// loop with activation checkpointing.
#include "bench/bench_internal.h"
#include "modula/composition/registry.h"
#include "modula/train/loop.h"

namespace modula::bench {
namespace {

constexpr int64_t kTrainBenchRank = 16;

// Next-token cross-entropy of logits [B, T, V] against ids [B, T] (fp32 loss).
torch::Tensor train_bench_causal_loss(const torch::Tensor& logits, const torch::Tensor& ids) {
  const int64_t V = logits.size(-1);
  return torch::nn::functional::cross_entropy(logits.slice(1, 0, -1).reshape({-1, V}).to(torch::kFloat32),
                                              ids.slice(1, 1).reshape({-1}));
}

}  // namespace

std::vector<Measurement> bench_train_lora(const BenchContext& ctx) {
  const auto s = model_shape(ctx.size);
  // peft_bench.py trains 8 x 512 tokens on the GPU.
  const int64_t rows = ctx.quick() ? 2 : ctx.gpu() ? 8 : 4, tokens = ctx.quick() ? 16 : ctx.gpu() ? 512 : 128;
  auto model = bench_llama(s, ctx);
  for (auto& p : model->parameters()) p.set_requires_grad(false);
  torch::manual_seed(ctx.seed + 1);
  auto lora = add_adapter(*model, lora_all_linear(kTrainBenchRank, 2.0 * kTrainBenchRank), "train");
  auto params = lora.parameters();
  for (auto& p : params) p.set_requires_grad(true);
  model->train();
  auto ids = torch::randint(0, s.vocab, {rows, tokens}, ctx.long_options());
  auto loss_of_batch = [&] {
    BackboneInput in;
    in.input_ids = ids;
    return train_bench_causal_loss(model->forward(in).logits, ids);
  };

  train::LoopOptions o;
  o.total_steps = ctx.warmup + ctx.iters;
  train::TrainLoop loop({{params, 1e-4}}, o, model.get()), recomputing({{params, 1e-4}}, o, model.get());
  torch::optim::AdamW bare(params, torch::optim::AdamWOptions(1e-4).weight_decay(0.0));
  std::vector<Variant> variants = {{"train_loop", [&] { loop.step([&](int64_t) { return loss_of_batch(); }); }},
                                   {"bare_adamw",
                                    [&] {
                                      bare.zero_grad();
                                      loss_of_batch().backward();
                                      bare.step();
                                    }},
                                   {"checkpointed", [&] {
                                      model->set_activation_checkpointing(true);
                                      recomputing.step([&](int64_t) { return loss_of_batch(); });
                                      model->set_activation_checkpointing(false);
                                    }}};
  auto t = time_round_robin(variants, ctx);

  const std::string shape = dims(rows, tokens) + " tokens";
  const double flops = train_step_flops(s, rows, tokens, kTrainBenchRank);
  const std::string note =
      "LoRA r16 alpha 32 on q/k/v/o/gate/up/down (" + std::to_string(lora.num_trainable()) +
      " trainable); FLOPs = forward + backward (frozen projections and LM head 1x forward, "
      "LoRA and attention 2x); train_loop = train::TrainLoop::step (grad norm, NaN checks), "
      "bare_adamw = forward, backward, torch AdamW; checkpointed = train_loop with activation checkpointing "
      "(every layer's forward runs again in the backward: not counted in FLOPs)";
  std::vector<Measurement> out;
  for (size_t i = 0; i < variants.size(); ++i) {
    out.push_back(
        measurement(ctx, "train_lora", variants[i].name, shape, t[i], static_cast<double>(rows * tokens), flops));
    out.back().note = note;
  }
  compare_to(out, "bare_adamw");
  model->eval();
  return out;
}

}  // namespace modula::bench
