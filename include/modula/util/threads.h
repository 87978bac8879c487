// Pinning the process's threads to CPUs (Linux: sched_setaffinity per thread; elsewhere the
// functions report that nothing was pinned). Used by `modula bench` so that the main thread
// and the thread pools it times (libgomp's, OpenBLAS's) do not migrate between cores.
#pragma once

#include <map>
#include <vector>

namespace modula {

// The CPUs the calling thread may run on, ascending (empty where unknown).
std::vector<int> thread_cpus();
// The CPUs thread `tid` (a Linux task id of this process) may run on; empty where unknown.
std::vector<int> thread_cpus(int tid);

// The first min(n, available) CPUs of the calling thread's set: what `n` threads are pinned to.
std::vector<int> cpus_for_threads(int n);

// Pins the calling thread to cpus[0] and every other thread of the process to cpus[1..] (to
// cpus[0] when there is one CPU): a pool's workers share the cores the main thread leaves.
// Threads started later inherit the creator's mask, so call `apply` after the pools exist
// (after a warm-up) and again whenever new threads may have started. The destructor gives
// every thread it touched its mask from before, and threads started meanwhile the creating
// thread's mask from before.
class PinnedThreads {
 public:
  explicit PinnedThreads(std::vector<int> cpus);
  ~PinnedThreads();
  PinnedThreads(const PinnedThreads&) = delete;
  PinnedThreads& operator=(const PinnedThreads&) = delete;

  // Pins the threads as above; returns how many were pinned (0 where not supported).
  int apply();
  const std::vector<int>& cpus() const { return cpus_; }
  bool pinned() const { return pinned_; }  // whether the last apply pinned the calling thread

 private:
  std::vector<int> cpus_;
  int creator_ = 0;  // task id of the thread that made this
  bool pinned_ = false;
  std::map<int, std::vector<int>> before_;  // task id -> its mask when first pinned
};

}  // namespace modula
