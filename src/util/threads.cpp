#include "modula/util/threads.h"

#include <algorithm>

#ifdef __linux__
#include <dirent.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstdlib>
#include <string>
#endif

namespace modula {
namespace {

#ifdef __linux__
int this_tid() { return static_cast<int>(syscall(SYS_gettid)); }

std::vector<int> cpus_of(int tid) {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(tid, sizeof set, &set) != 0) return {};
  std::vector<int> out;
  for (int c = 0; c < CPU_SETSIZE; ++c)
    if (CPU_ISSET(c, &set)) out.push_back(c);
  return out;
}

bool set_cpus(int tid, const std::vector<int>& cpus) {
  cpu_set_t set;
  CPU_ZERO(&set);
  for (int c : cpus)
    if (c >= 0 && c < CPU_SETSIZE) CPU_SET(c, &set);
  return CPU_COUNT(&set) > 0 && sched_setaffinity(tid, sizeof set, &set) == 0;
}

// Task ids of this process's threads (/proc/self/task), ascending.
std::vector<int> task_ids() {
  std::vector<int> out;
  DIR* dir = opendir("/proc/self/task");
  if (!dir) return out;
  while (const dirent* e = readdir(dir))
    if (e->d_name[0] != '.') out.push_back(std::atoi(e->d_name));
  closedir(dir);
  std::sort(out.begin(), out.end());
  return out;
}
#endif

}  // namespace

#ifdef __linux__
std::vector<int> thread_cpus() { return cpus_of(0); }
std::vector<int> thread_cpus(int tid) { return cpus_of(tid); }
#else
std::vector<int> thread_cpus() { return {}; }
std::vector<int> thread_cpus(int) { return {}; }
#endif

std::vector<int> cpus_for_threads(int n) {
  auto cpus = thread_cpus();
  if (n >= 1 && static_cast<size_t>(n) < cpus.size()) cpus.resize(static_cast<size_t>(n));
  return cpus;
}

PinnedThreads::PinnedThreads(std::vector<int> cpus) : cpus_(std::move(cpus)) {
#ifdef __linux__
  creator_ = this_tid();
#endif
}

int PinnedThreads::apply() {
#ifdef __linux__
  pinned_ = false;
  if (cpus_.empty()) return 0;
  const int self = this_tid();
  const std::vector<int> main_cpu = {cpus_[0]};
  const std::vector<int> workers = cpus_.size() > 1 ? std::vector<int>(cpus_.begin() + 1, cpus_.end()) : main_cpu;
  int pinned = 0;
  const bool first = before_.empty();
  for (int tid : task_ids()) {
    auto old = cpus_of(tid);
    if (old.empty()) continue;  // exited meanwhile
    // A thread started since the first call inherited a pinned mask: it gets the creator's.
    if (!first && !before_.count(tid) && before_.count(creator_)) old = before_.at(creator_);
    before_.emplace(tid, std::move(old));
    const bool ok = set_cpus(tid, tid == self ? main_cpu : workers);
    pinned += ok ? 1 : 0;
    if (tid == self) pinned_ = ok;
  }
  return pinned;
#else
  return 0;
#endif
}

PinnedThreads::~PinnedThreads() {
#ifdef __linux__
  if (before_.empty()) return;
  const auto creator = before_.find(creator_);
  for (int tid : task_ids()) {
    const auto it = before_.find(tid);
    if (it != before_.end())
      set_cpus(tid, it->second);
    else if (creator != before_.end())
      set_cpus(tid, creator->second);  // started while pinned: it inherited a pinned mask
  }
#endif
}

}  // namespace modula
