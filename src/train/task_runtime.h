// Internal: one task inside a run — its examples, head, data position, and the loss /
// evaluation of a batch for its type.
#pragma once

#include <functional>
#include <initializer_list>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "modula/backbone/backbone.h"
#include "modula/modules/adapter.h"
#include "modula/train/data.h"

namespace modula::train::detail {

// SplitMix64 over a pair: independent streams per (seed, purpose, phase, step, ...).
inline uint64_t mix(uint64_t a, uint64_t b) {
  uint64_t z = a + 0x9e3779b97f4a7c15ULL * (b + 1);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}
inline uint64_t mix(std::initializer_list<uint64_t> xs) {
  uint64_t h = 0;
  for (auto x : xs) h = mix(h, x);
  return h;
}

struct TaskRuntime {
  TaskConfig cfg;
  Encoding enc;
  std::vector<Example> train, eval;
  torch::nn::Linear head{nullptr};  // classification tasks: hidden -> labels
  // Data position: epoch and the next batch of that epoch's order.
  int64_t epoch = 0, cursor = 0;
  uint64_t data_seed = 0;
  std::vector<std::vector<int64_t>> order;  // batches of `epoch` (cache)
  int64_t order_epoch = -1;

  int64_t num_labels() const { return static_cast<int64_t>(enc.labels().size()); }
  bool classification() const {
    return cfg.type == TaskType::SequenceClassification || cfg.type == TaskType::TokenClassification;
  }
  // The next training batch (advances the data position; a new epoch reshuffles).
  Batch next_batch(int64_t batch_size);
};

// Sums a batch contributes to evaluation.
struct EvalSums {
  double nll = 0;                             // summed token / example loss
  int64_t count = 0;                          // scored tokens / examples
  std::vector<torch::Tensor> preds, targets;  // flattened, scored positions only
};

// Input modules (prompts, prefixes) a forward pass applies, in order.
using InputModules = std::vector<std::shared_ptr<InputModule>>;

// The forward pass with `inputs` applied (the enabled adapters' input modules, then a
// composition's), logits / hidden states cut to the batch's own positions.
BackboneOutput forward_batch(Backbone& model, const InputModules& inputs, const Batch& b);

// What a task scores in a batch: logits [B,S,C] and their targets [B,S] (kIgnoreIndex =
// unscored). Causal LM: positions 0..T-2 predicting tokens 1..T-1 (S = T-1, C = vocabulary);
// masked LM: every position; token classification: the head on every position (C =
// labels); sequence classification: the head on the pooled hidden state (S = 1).
struct TaskLogits {
  torch::Tensor logits, labels;
};
TaskLogits task_logits(Backbone& model, TaskRuntime& task, const InputModules& inputs, const Batch& b);

// Mean loss of a batch (sum of per-token / per-example cross-entropy / count), and, when
// `sums` is given, what evaluation needs.
torch::Tensor batch_loss(Backbone& model, TaskRuntime& task, const InputModules& inputs, const Batch& b,
                         EvalSums* sums = nullptr);

// One evaluation pass over task.eval, in order, in batches of batch_size: what the trainer's
// evaluation and modula::train::evaluate share (same batches, same MLM masks, same sums).
struct EvalPass {
  int64_t batch_size = 16;
  int64_t max_examples = 0;     // 0 = all
  uint64_t seed = 0;            // the run's seed (MLM masks)
  size_t task_index = 0;        // the task's position in the run (MLM masks)
  int64_t world = 1, rank = 0;  // data parallel: rank r takes batches r, r + world, ...
  int64_t vocab_size = 0;
  torch::Device device{torch::kCPU};
};
// `route` sets the routing ids of a batch's rows before its forward pass. Call under
// NoGradGuard with the model in eval mode.
EvalSums eval_pass(Backbone& model, TaskRuntime& task, const InputModules& inputs, const EvalPass& pass,
                   const std::function<void(const Batch&)>& route);

// loss, accuracy, macro_f1 (classification) or perplexity (LM).
std::map<std::string, double> finish_eval(const TaskRuntime& task, const EvalSums& sums);

// Throws TrainError when a token id of `examples` is outside the model's vocabulary.
void check_vocabulary(const std::string& task, const std::vector<Example>& examples, int64_t vocab_size);

}  // namespace modula::train::detail
