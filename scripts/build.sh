#!/usr/bin/env bash
# Configures (once) and builds modula into build/. Extra args go to cmake at configure.
#   MODULA_TARGETS="modula_cli" scripts/build.sh   build only these targets (default: all)
#   MODULA_UNITY=0 scripts/build.sh                 configure without the unity build (one
#                                                   file per translation unit: faster rebuilds
#                                                   after a one-file edit, slower clean builds)
# CUDA libtorch: CMAKE_PREFIX_PATH=$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)') scripts/build.sh
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${MODULA_BUILD_DIR:-build}
JOBS=${MODULA_JOBS:-$(nproc)}
UNITY=ON
if [ "${MODULA_UNITY:-1}" = "0" ]; then UNITY=OFF; fi
if [ ! -f "$BUILD_DIR/build.ninja" ]; then
  cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release -DMODULA_UNITY="$UNITY" "$@"
fi
targets=()
for t in ${MODULA_TARGETS:-}; do targets+=(--target "$t"); done
cmake --build "$BUILD_DIR" -j "$JOBS" "${targets[@]}"
