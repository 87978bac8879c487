// Large, long-lived tensors read from DRAM at every step (adapter banks, model weights) in
// memory advised for transparent huge pages: one TLB entry per 2 MiB instead of per 4 KiB.
// A cold streaming read on the 2-core CI machine: 18-22 GB/s on 4 KiB pages, 29-31 GB/s on
// huge pages (THP "madvise" mode, the Debian default).
#pragma once

#include <torch/torch.h>

namespace modula {

// A contiguous copy of t (same values, dtype, sizes) in 2 MiB-aligned memory advised
// MADV_HUGEPAGE, when t is a CPU tensor of at least kHugePageMinBytes; otherwise
// t.contiguous(). The kernel may still back it with small pages (no THP, fragmentation):
// the values are the same either way. Does not keep autograd history (a leaf copy).
torch::Tensor on_huge_pages(const torch::Tensor& t);

inline constexpr int64_t kHugePageMinBytes = int64_t{1} << 20;

}  // namespace modula
