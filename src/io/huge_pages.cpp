#include "modula/util/huge_pages.h"

#include <cstdlib>
#include <cstring>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace modula {

torch::Tensor on_huge_pages(const torch::Tensor& t) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr size_t kHuge = size_t{2} << 20;
  if (!t.defined() || !t.is_cpu() || t.nbytes() < static_cast<size_t>(kHugePageMinBytes)) return t.contiguous();
  const size_t bytes = (t.nbytes() + kHuge - 1) / kHuge * kHuge;
  void* p = std::aligned_alloc(kHuge, bytes);
  if (!p) return t.contiguous();
  madvise(p, bytes, MADV_HUGEPAGE);  // advice: failure leaves small pages
  auto out = torch::from_blob(
      p, t.sizes(), [](void* q) { std::free(q); }, t.options().requires_grad(false));
  torch::NoGradGuard no_grad;
  out.copy_(t);
  return out;
#else
  return t.contiguous();
#endif
}

}  // namespace modula
