// The message of the exception of type E that f() throws; "<no exception>" when none is
// thrown (other exception types propagate and fail the test).
#pragma once

#include <exception>
#include <string>
#include <utility>

namespace modula::testing {

template <typename E = std::exception, typename F>
std::string error_of(F&& f) {
  try {
    std::forward<F>(f)();
  } catch (const E& e) {
    return e.what();
  }
  return "<no exception>";
}

}  // namespace modula::testing
