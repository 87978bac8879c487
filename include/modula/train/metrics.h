// Evaluation metrics users expect: accuracy, macro-F1 (classification), perplexity (LM).
#pragma once

#include <torch/torch.h>

#include <cstdint>

namespace modula::train {

// Fraction of scored positions (target != ignore_index) where pred == target.
double accuracy(const torch::Tensor& pred, const torch::Tensor& target, int64_t ignore_index = -100);
// Mean over classes of F1 = 2·P·R / (P + R); classes absent from both pred and target are
// left out (scikit-learn's labels=union convention). Ignored positions are dropped.
double macro_f1(const torch::Tensor& pred, const torch::Tensor& target, int64_t num_classes,
                int64_t ignore_index = -100);
// exp(mean token negative log-likelihood).
double perplexity(double total_nll, int64_t tokens);

}  // namespace modula::train
