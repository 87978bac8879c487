// A data-parallel rank's rows of a global batch, scored counts, and reduced evaluation sums.
#include "distributed_shard.h"

namespace modula::train::detail {

std::pair<int64_t, int64_t> shard_rows(int64_t rows, int rank, int world) {
  return {rows * rank / world, rows * (rank + 1) / world};
}

Batch slice_rows(const Batch& b, int64_t lo, int64_t hi) {
  auto cut = [&](const torch::Tensor& t) { return t.defined() ? t.narrow(0, lo, hi - lo) : t; };
  Batch s;
  s.input_ids = cut(b.input_ids);
  s.attention_mask = cut(b.attention_mask);
  s.token_type_ids = cut(b.token_type_ids);
  s.labels = cut(b.labels);
  s.metadata = cut(b.metadata);
  s.tokens = s.attention_mask.defined() ? s.attention_mask.sum().item<int64_t>() : 0;
  return s;
}

int64_t scored_count(TaskType type, const Batch& b) {
  if (type == TaskType::CausalLM) {  // position t predicts token t+1 (batch_loss)
    const int64_t T = b.input_ids.size(1);
    if (T < 2) return 0;
    auto labels = b.labels.masked_fill(b.attention_mask.eq(0), kIgnoreIndex);
    return labels.narrow(1, 1, T - 1).ne(kIgnoreIndex).sum().item<int64_t>();
  }
  return b.labels.ne(kIgnoreIndex).sum().item<int64_t>();
}

void reduce_eval(Distributed& dist, EvalSums& sums, const torch::Device& device) {
  const torch::Device on = dist.backend() == "nccl" ? device : torch::Device(torch::kCPU);
  auto totals = torch::tensor({sums.nll, static_cast<double>(sums.count)}, torch::kFloat64).to(on);
  dist.all_reduce(totals);
  totals = totals.cpu();
  sums.nll = totals[0].item<double>();
  sums.count = static_cast<int64_t>(std::llround(totals[1].item<double>()));
  auto gather = [&](std::vector<torch::Tensor>& parts) {
    auto local = parts.empty() ? torch::empty({0}, torch::kInt64) : torch::cat(parts);
    auto all = dist.all_gather(local.to(torch::kInt64).to(on)).cpu();
    parts = {all};
  };
  gather(sums.preds);
  gather(sums.targets);
}

}  // namespace modula::train::detail
