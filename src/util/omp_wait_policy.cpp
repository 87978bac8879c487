// Every modula executable starts libgomp with OMP_WAIT_POLICY=PASSIVE unless the user set
// the variable: before any library's constructor runs (.preinit_array), the process
// re-executes itself with the variable added. libgomp reads it once, in its constructor,
// and the dynamic linker runs that constructor before any code of ours can call setenv.
//
// Why: libtorch runs elementwise work on OpenMP threads and GEMMs on OpenBLAS's own pthreads.
// With libgomp's default policy its idle threads spin after every parallel region and take
// the cores OpenBLAS's threads need (and OpenBLAS's idle threads spin back, in sched_yield).
// On the 2-core machine that made a LoRA training step 2.7x and a mixed-adapter decode 3x
// slower (docs/benchmarks.md, "Threads").
#include <unistd.h>

#include <cstring>

namespace {

constexpr size_t kMaxEnv = 4096;  // more variables than this: start as is (no re-exec)

void omp_wait_policy_passive(int, char** argv, char** envp) {
  static char* env[kMaxEnv + 2];
  size_t n = 0;
  for (; envp && envp[n]; ++n) {
    if (std::strncmp(envp[n], "OMP_WAIT_POLICY=", 16) == 0 || n == kMaxEnv) return;  // the user's own value wins
    env[n] = envp[n];
  }
  env[n] = const_cast<char*>("OMP_WAIT_POLICY=PASSIVE");
  env[n + 1] = nullptr;
  execve("/proc/self/exe", argv, env);  // returns only on failure: run on with libgomp's default
}

__attribute__((section(".preinit_array"), used)) void (*const kOmpWaitPolicy)(int, char**,
                                                                              char**) = &omp_wait_policy_passive;

}  // namespace
