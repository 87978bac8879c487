#!/usr/bin/env bash
# modula vs llama.cpp on the CPU, side by side: the same Llama (modula bench's cpu size:
# hidden 512, 4 layers, vocab 8000, fp32) and its LoRA r64 adapters, written by modula,
# converted to GGUF f32 (to_gguf.py) and run by the llama.cpp that npm's
# node-llama-cpp@3.21.1 ships; then modula bench's prefill and decode workloads with the
# same thread count. Prints both engines' JSON lines and a side-by-side table.
#
#   bench/llama_cpp/run.sh [OUT_DIR] [THREADS]      (default build/llama-cpp-bench, 2)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=${1:-$root/build/llama-cpp-bench}
threads=${2:-2}
modula=${MODULA:-$root/build/apps/modula/modula}
[ -x "$modula" ] || { echo "run.sh: $modula not found (build first, or set MODULA)" >&2; exit 2; }
command -v node >/dev/null || { echo "run.sh: node not found (apt-get install nodejs npm)" >&2; exit 2; }
mkdir -p "$out"
(cd "$here" && [ -d node_modules/node-llama-cpp ] || npm ci --omit=optional --ignore-scripts --no-audit --no-fund)

"$modula" bench --write-models "$out/models"
python3 "$here/to_gguf.py" model "$out/models/model" "$out/model.gguf"
for i in $(seq 0 15); do
  python3 "$here/to_gguf.py" lora "$out/models/adapters/a$i" "$out/a$i.gguf" --model "$out/models/model"
done
node "$here/bench.mjs" "$out" --threads "$threads" | tee "$out/llama_cpp.jsonl"
"$modula" bench --workloads prefill,decode --threads "$threads" --json "$out/modula.jsonl" > "$out/modula.txt"
python3 "$here/compare.py" "$out/modula.jsonl" "$out/llama_cpp.jsonl"
