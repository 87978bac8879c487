#!/usr/bin/env bash
# Configures (once) and builds modula into build/. Extra args go to cmake at configure.
# CUDA libtorch: CMAKE_PREFIX_PATH=$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)') scripts/build.sh
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${MODULA_BUILD_DIR:-build}
JOBS=${MODULA_JOBS:-$(nproc)}
if [ ! -f "$BUILD_DIR/build.ninja" ]; then
  cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release "$@"
fi
cmake --build "$BUILD_DIR" -j "$JOBS"
