#!/usr/bin/env bash
# Sets up, builds and runs the whole test suite (the README's test command; CI runs it).
#   scripts/test.sh [CTEST ARGS]              the suite in build/
#   scripts/test.sh --sanitize [CTEST ARGS]   the suite built with AddressSanitizer and
#                                             UndefinedBehaviorSanitizer in build-sanitize/
#                                             (no Python extension: python3 cannot load an
#                                             ASan-instrumented module without preloading
#                                             libasan); any report fails the test it is in.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --tests
if [ "${1:-}" = "--sanitize" ]; then
  shift
  export MODULA_BUILD_DIR=${MODULA_BUILD_DIR:-build-sanitize}
  scripts/build.sh -DMODULA_SANITIZE=ON -DMODULA_BUILD_PYTHON=OFF
  # Leaks: libtorch keeps process-lifetime allocations (op registries, thread pools) that
  # LeakSanitizer reports at exit; leak checking is off, every other ASan/UBSan report
  # stops the process with a non-zero status.
  export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:detect_odr_violation=0
  export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
else
  scripts/build.sh
fi
cd "${MODULA_BUILD_DIR:-build}"
ctest --output-on-failure -j "$(nproc)" "$@"
