// Runs a call that used to hang under a time limit: a hang is a test failure that ends
// the process (the stuck thread cannot be stopped), not a test run that never finishes.
#pragma once

#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <future>
#include <memory>
#include <thread>

namespace modula::testing {

// Runs fn on another thread; fails the test and exits with status 1 when fn has not
// returned after `seconds`. Exceptions from fn are rethrown here.
inline void within_seconds(double seconds, const std::function<void()>& fn) {
  auto task = std::make_shared<std::packaged_task<void()>>(fn);
  auto done = task->get_future();
  std::thread([task] { (*task)(); }).detach();
  if (done.wait_for(std::chrono::duration<double>(seconds)) != std::future_status::ready) {
    ADD_FAILURE() << "still running after " << seconds << " s (hang)";
    std::fprintf(stderr, "watchdog: still running after %g s, exiting\n", seconds);
    std::fflush(nullptr);
    std::_Exit(1);
  }
  done.get();
}

}  // namespace modula::testing
