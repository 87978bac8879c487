#!/usr/bin/env bash
# Sets up, builds and runs the whole test suite (the README's test command; CI runs it).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --tests
scripts/build.sh
cd "${MODULA_BUILD_DIR:-build}"
ctest --output-on-failure -j "$(nproc)" "$@"
