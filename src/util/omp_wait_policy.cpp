// libmodula_omp_wait_policy.so: sets OMP_WAIT_POLICY=PASSIVE (unless the user set it) before
// libgomp reads its environment. Every modula executable links it as its first shared
// library, so the dynamic linker initialises it (after libc, which it alone depends on)
// before libgomp, whose constructor reads the variable once.
//
// Why: libtorch runs elementwise work on OpenMP threads and GEMMs on OpenBLAS's own pthreads.
// With libgomp's default policy its idle threads spin after every parallel region and take
// the cores OpenBLAS's threads need (and OpenBLAS's idle threads spin back, in sched_yield).
// On the 2-core machine that made a LoRA training step 2.7x and a mixed-adapter decode 3x
// slower (docs/benchmarks.md, "Threads").
#include <cstdlib>

namespace {
__attribute__((constructor)) void modula_omp_wait_policy() { setenv("OMP_WAIT_POLICY", "PASSIVE", 0); }
}  // namespace
