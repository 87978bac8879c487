// Internal: how a data-parallel rank takes its part of a global batch and how evaluation
// sums are reduced (the contract is in include/modula/train/distributed.h).
#pragma once

#include <utility>

#include "modula/train/distributed.h"
#include "task_runtime.h"

namespace modula::train::detail {

// The rows of rank r of W in a batch of `rows`: [r·rows/W, (r+1)·rows/W).
std::pair<int64_t, int64_t> shard_rows(int64_t rows, int rank, int world);

// Rows [lo, hi) of every tensor of the batch; tokens recounted.
Batch slice_rows(const Batch& b, int64_t lo, int64_t hi);

// The positions batch_loss scores for a task type (its loss is their mean).
int64_t scored_count(TaskType type, const Batch& b);

// Σ nll and count over ranks; predictions and targets gathered (rank order), so that
// finish_eval gives every rank the metrics of the whole eval set.
void reduce_eval(Distributed& dist, EvalSums& sums, const torch::Device& device);

}  // namespace modula::train::detail
