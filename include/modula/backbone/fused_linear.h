// Several Linear sites that read the same input — q/k/v, gate/up — computed as one GEMM.
//
//   [y_1 | … | y_n] = x · [W_1; …; W_n]^T + [b_1 | … | b_n],  then  y_i ← out_i(x, y_i)
//
// The HF names and parameters stay: the first fused call packs the weights into one
// [Σ out, in] tensor and makes each site's weight a row block (a view) of it, so the fused
// weight costs no memory and loading, merging and optimizer steps that write the weights
// in place keep it current. Weights replaced by new tensors (a dtype or device move) are
// packed again at the next call. Packing writes the parameters: not while another thread
// runs the same sites.
//
// Measured (`modula bench --workloads projections`, CPU, 2 threads, hidden 512 / FFN 1376):
// the five projections of a layer 1.02× faster at 16 × 64 tokens, 1.17–1.32× at 16 × 1,
// 0.91–1.02× at 1 × 1 (a mat-vec reading the same bytes either way); whole forwards within
// noise to +5% (decode batch 1). Fewer kernel launches matter more on a GPU.
#pragma once

#include <torch/torch.h>

#include <vector>

#include "modula/backbone/layers.h"

namespace modula {

// sites[i](x) for every i. One GEMM when the sites can share it: same input size, dtype
// and device, bias on all or none, no module transforming the input ((IA)³ on a
// feed-forward input), no Conv1D layout, and no weight that needs a gradient now (a
// fused weight would not pass it back); otherwise each site runs on its own.
std::vector<torch::Tensor> project(const std::vector<LinearImpl*>& sites, const torch::Tensor& x);

// Whether the sites' weights are consecutive row blocks of one tensor (what project()
// packs them into).
bool weights_packed(const std::vector<LinearImpl*>& sites);

}  // namespace modula
