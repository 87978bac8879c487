#!/usr/bin/env bash
# GPU machine only: build against the CUDA libtorch of the local PyTorch, run the test
# suite (CUDA tests included), the conformance runner, the quickstart, and check that a
# folder modula writes loads in HF transformers with the same greedy continuation.
# ICU and yaml-cpp headers are missing on that image: pass MODULA_ICU_ROOT / MODULA_YAML_ROOT
# (static copies, see CMakeLists; kept in the git-ignored .device/ and carried there).
#   scripts/gpu_check.sh [--build-only]     (--build-only: configure and build build-cuda, no checks)
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_PREFIX=$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')
ICU_ARGS=()
if [ -n "${MODULA_ICU_ROOT:-}" ]; then ICU_ARGS=(-DMODULA_ICU_ROOT="$MODULA_ICU_ROOT"); fi
# yaml-cpp headers are missing there too: MODULA_YAML_ROOT (include/yaml-cpp + lib/libyaml-cpp.a).
if [ -n "${MODULA_YAML_ROOT:-}" ]; then ICU_ARGS+=(-DMODULA_YAML_ROOT="$MODULA_YAML_ROOT"); fi
cmake -S . -B build-cuda -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$TORCH_PREFIX" "${ICU_ARGS[@]}"
time cmake --build build-cuda -j "$(nproc)"
if [ "${1:-}" = "--build-only" ]; then exit 0; fi
(cd build-cuda && ctest --output-on-failure -j 8)
build-cuda/apps/modula/modula conformance tests/fixtures | grep -v SKIP
build-cuda/apps/modula/modula quickstart --tiny --out build-cuda/quickstart
python3 scripts/hf_check.py build-cuda/quickstart/backbone build-cuda/apps/modula/modula
# Adapters written by modula load in PEFT unchanged and give the same logits.
rm -rf build-cuda/peft-interop
build-cuda/tests/peft_interop tests/fixtures build-cuda/peft-interop
python3 scripts/peft_check.py tests/fixtures build-cuda/peft-interop build-cuda/apps/modula/modula
