// on_huge_pages: a contiguous leaf copy in THP-advised memory for large CPU tensors.
#include <gtest/gtest.h>

#include <cstdint>
#include <fstream>
#include <sstream>
#include <string>

#include "modula/util/huge_pages.h"

namespace {

constexpr uintptr_t kHuge = uintptr_t{2} << 20;

// The THP mode in use ("always", "madvise" or "never"): the bracketed word.
std::string thp_mode() {
  std::ifstream f("/sys/kernel/mm/transparent_hugepage/enabled");
  std::string line;
  std::getline(f, line);
  auto open = line.find('['), close = line.find(']');
  return open == std::string::npos || close == std::string::npos ? "" : line.substr(open + 1, close - open - 1);
}

// AnonHugePages (kB) of the mapping that holds p, from /proc/self/smaps; -1 when not found.
long anon_huge_kb(const void* p) {
  std::ifstream f("/proc/self/smaps");
  const auto addr = reinterpret_cast<uintptr_t>(p);
  std::string line;
  bool inside = false;
  while (std::getline(f, line)) {
    unsigned long lo = 0, hi = 0;
    char dash = 0;
    std::istringstream head(line);
    if (head >> std::hex >> lo >> dash >> hi && dash == '-') {
      inside = lo <= addr && addr < hi;
      continue;
    }
    if (inside && line.rfind("AnonHugePages:", 0) == 0) return std::stol(line.substr(14));
  }
  return -1;
}

}  // namespace

TEST(HugePages, LargeTensorsGetAnAlignedLeafCopy) {
  auto src = torch::randn({1024, 768}, torch::requires_grad()).t();  // 3 MiB, not contiguous
  auto out = modula::on_huge_pages(src);
  EXPECT_TRUE(out.is_contiguous());
  EXPECT_FALSE(out.requires_grad());
  EXPECT_EQ(out.sizes(), src.sizes());
  EXPECT_TRUE(torch::equal(out, src.detach()));
  EXPECT_EQ(reinterpret_cast<uintptr_t>(out.data_ptr()) % kHuge, 0u);
  {
    torch::NoGradGuard no_grad;
    src.mul_(2);  // a copy: the source's later writes do not reach it
  }
  EXPECT_FALSE(torch::equal(out, src.detach()));
  out.add_(1);  // writable in place (an optimizer step, a checkpoint load)
  auto bf16 = modula::on_huge_pages(torch::ones({1024, 1024}, torch::kBFloat16));
  EXPECT_EQ(bf16.scalar_type(), torch::kBFloat16);
  EXPECT_EQ(bf16.sum().item<double>(), 1024.0 * 1024.0);
}

TEST(HugePages, SmallTensorsStayWhereTheyAre) {
  auto small = torch::randn({64, 64});
  auto out = modula::on_huge_pages(small);
  EXPECT_TRUE(out.is_same(small));  // contiguous already: the same tensor
  auto strided = torch::randn({64, 32}).t();
  EXPECT_TRUE(torch::equal(modula::on_huge_pages(strided), strided));
  EXPECT_TRUE(modula::on_huge_pages(strided).is_contiguous());
}

// Where the kernel has THP (mode "madvise" or "always"), the advised memory is backed by huge
// pages once written (defrag permitting; the Debian default compacts for madvised regions).
TEST(HugePages, BackedByHugePagesWhereTheKernelHasThem) {
  const auto mode = thp_mode();
  if (mode != "madvise" && mode != "always") GTEST_SKIP() << "transparent huge pages: '" << mode << "'";
  auto out = modula::on_huge_pages(torch::randn({3, 1024, 1024}));  // 12 MiB
  EXPECT_GE(anon_huge_kb(out.data_ptr()), 2048) << "THP mode " << mode;
}
