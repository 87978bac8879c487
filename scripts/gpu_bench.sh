#!/usr/bin/env bash
# GPU machine only (issue 11): in one call, build modula against the local CUDA libtorch
# (scripts/gpu_check.sh --build-only), then on the same GPU `modula bench --size gpu`
# (peft_bench.py's 271M Llama in bf16) and the peer baselines peft_bench.py and
# moe_bench.py (HF transformers + PEFT), each output kept under OUT_DIR.
#
#   scripts/gpu_bench.sh PEER_DIR OUT_DIR [WORKLOADS]
#
# PEER_DIR holds peft_bench.py and moe_bench.py (the team's shared peer scripts; carry a copy
# in the git-ignored .device/). WORKLOADS: a --workloads list for modula bench (default all).
# Not yet run: no GPU has been lent since it was written (2026-12-07).
set -euo pipefail
cd "$(dirname "$0")/.."
PEER=${1:?usage: scripts/gpu_bench.sh PEER_DIR OUT_DIR [WORKLOADS]}
OUT=${2:?usage: scripts/gpu_bench.sh PEER_DIR OUT_DIR [WORKLOADS]}
for f in peft_bench.py moe_bench.py; do
  [ -f "$PEER/$f" ] || { echo "gpu_bench: $PEER/$f not found" >&2; exit 2; }
done
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
scripts/gpu_check.sh --build-only > "$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
WL=()
if [ -n "${3:-}" ]; then WL=(--workloads "$3"); fi
build-cuda/apps/modula/modula bench --size gpu "${WL[@]}" --json "$OUT/modula.jsonl" 2> "$OUT/modula.err" |
  tee "$OUT/modula.txt"
python3 "$PEER/peft_bench.py" 2>&1 | tee "$OUT/peft_bench.txt"
python3 "$PEER/moe_bench.py" 2>&1 | tee "$OUT/moe_bench.txt"
