// Internal: one task inside a run — its examples, head, data position, and the loss /
// evaluation of a batch for its type.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "modula/backbone/backbone.h"
#include "modula/modules/adapter.h"
#include "modula/train/data.h"

namespace modula::train::detail {

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

// Mean loss of a batch (sum of per-token / per-example cross-entropy / count), and, when
// `sums` is given, what evaluation needs.
torch::Tensor batch_loss(Backbone& model, TaskRuntime& task, const InputModules& inputs, const Batch& b,
                         EvalSums* sums = nullptr);

// loss, accuracy, macro_f1 (classification) or perplexity (LM).
std::map<std::string, double> finish_eval(const TaskRuntime& task, const EvalSums& sums);

}  // namespace modula::train::detail
