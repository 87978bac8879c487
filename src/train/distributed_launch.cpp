// The local launcher of `modula train --nproc N` (torchrun's job on one machine): N ranks
// as child processes, watched; one failure stops the rest.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstring>
#include <thread>

#include "distributed_backend.h"
#include "modula/train/config.h"
#include "modula/util/error.h"

extern char** environ;

namespace modula::train {
namespace {

using detail::kDistTag;

volatile std::sig_atomic_t g_forward = 0;  // a signal the launcher got, for its ranks
void on_signal(int sig) { g_forward = sig; }

// A port the kernel says is free now (bound to `addr`, port 0, then released).
int free_port(const std::string& addr) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  check<TrainError>(fd >= 0, kDistTag, std::string("cannot open a socket: ") + std::strerror(errno));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = 0;
  a.sin_addr.s_addr = ::inet_addr(addr == "localhost" ? "127.0.0.1" : addr.c_str());
  if (a.sin_addr.s_addr == INADDR_NONE) a.sin_addr.s_addr = htonl(INADDR_ANY);
  socklen_t len = sizeof a;
  int port = 0;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 &&
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0)
    port = ntohs(a.sin_port);
  ::close(fd);
  check<TrainError>(port > 0, kDistTag, "cannot find a free port on " + addr + "; give --master-port");
  return port;
}

std::string describe(int status) {
  if (WIFEXITED(status)) return "exited with status " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return "was killed by signal " + std::to_string(WTERMSIG(status));
  return "stopped";
}

}  // namespace

void launch_local(const LaunchOptions& o) {
  check<TrainError>(o.nproc >= 1, kDistTag, "--nproc must be >= 1, got " + std::to_string(o.nproc));
  check<TrainError>(!o.argv.empty(), kDistTag, "launch_local: argv is empty");
  const int port = o.master_port > 0 ? o.master_port : free_port(o.master_addr);
  // The parent's environment without torchrun's variables, then each rank's.
  std::vector<std::string> base;
  for (char** e = environ; *e; ++e) {
    std::string kv = *e;
    std::string key = kv.substr(0, kv.find('='));
    if (key != "RANK" && key != "WORLD_SIZE" && key != "LOCAL_RANK" && key != "LOCAL_WORLD_SIZE" &&
        key != "MASTER_ADDR" && key != "MASTER_PORT")
      base.push_back(kv);
  }
  std::vector<char*> argv;
  for (const auto& a : o.argv) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);

  struct sigaction sa {
  }, old_int{}, old_term{};
  sa.sa_handler = on_signal;  // no SA_RESTART: waitpid returns EINTR and the loop forwards
  sigemptyset(&sa.sa_mask);
  ::sigaction(SIGINT, &sa, &old_int);
  ::sigaction(SIGTERM, &sa, &old_term);
  g_forward = 0;

  std::vector<pid_t> pids(static_cast<size_t>(o.nproc), 0);
  std::vector<bool> running(pids.size(), false);
  auto stop_all = [&](int sig) {
    for (size_t r = 0; r < pids.size(); ++r)
      if (running[r]) ::kill(pids[r], sig);
  };
  std::string failure;
  for (int r = 0; r < o.nproc; ++r) {
    std::vector<std::string> env = base;
    env.push_back("RANK=" + std::to_string(r));
    env.push_back("LOCAL_RANK=" + std::to_string(r));
    env.push_back("WORLD_SIZE=" + std::to_string(o.nproc));
    env.push_back("LOCAL_WORLD_SIZE=" + std::to_string(o.nproc));
    env.push_back("MASTER_ADDR=" + o.master_addr);
    env.push_back("MASTER_PORT=" + std::to_string(port));
    std::vector<char*> envp;
    for (auto& kv : env) envp.push_back(kv.data());
    envp.push_back(nullptr);
    int rc = ::posix_spawn(&pids[r], argv[0], nullptr, nullptr, argv.data(), envp.data());
    if (rc != 0) {
      failure = "cannot start rank " + std::to_string(r) + " (" + o.argv[0] + "): " + std::strerror(rc);
      break;
    }
    running[r] = true;
  }

  int left = 0;
  for (bool b : running) left += b;
  if (!failure.empty()) stop_all(SIGTERM);
  bool stopping = !failure.empty();
  auto deadline = std::chrono::steady_clock::time_point::max();
  if (stopping)
    deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(static_cast<int64_t>(o.grace_s * 1000.0));
  while (left > 0) {
    if (g_forward) {
      if (failure.empty()) failure = "stopped by signal " + std::to_string(static_cast<int>(g_forward));
      stop_all(static_cast<int>(g_forward));
      g_forward = 0;
      if (!stopping)
        deadline =
            std::chrono::steady_clock::now() + std::chrono::milliseconds(static_cast<int64_t>(o.grace_s * 1000.0));
      stopping = true;
    }
    int status = 0;
    pid_t pid = ::waitpid(-1, &status, stopping ? WNOHANG : 0);
    if (pid < 0) {
      if (errno == EINTR) continue;
      break;  // ECHILD: nothing left
    }
    if (pid == 0) {  // stopping: wait a little, then force
      if (std::chrono::steady_clock::now() > deadline) stop_all(SIGKILL);
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
      continue;
    }
    for (size_t r = 0; r < pids.size(); ++r) {
      if (!running[r] || pids[r] != pid) continue;
      running[r] = false;
      --left;
      const bool ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
      if (!ok && failure.empty()) {
        failure = "rank " + std::to_string(r) + " (pid " + std::to_string(pid) + ") " + describe(status) +
                  "; stopped the other ranks";
        stop_all(SIGTERM);
        stopping = true;
        deadline =
            std::chrono::steady_clock::now() + std::chrono::milliseconds(static_cast<int64_t>(o.grace_s * 1000.0));
      }
    }
  }
  ::sigaction(SIGINT, &old_int, nullptr);
  ::sigaction(SIGTERM, &old_term, nullptr);
  if (!failure.empty()) throw_error<TrainError>(kDistTag, failure);
}

}  // namespace modula::train
