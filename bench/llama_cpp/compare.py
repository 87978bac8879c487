#!/usr/bin/env python3
"""Side-by-side table of modula bench (prefill, decode) and bench.mjs (llama.cpp) JSON lines.

    compare.py MODULA.jsonl LLAMA_CPP.jsonl
"""
import json
import sys


def lines(path):
    out = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line.startswith("{"):
                continue
            try:
                out.append(json.loads(line))
            except ValueError as e:
                sys.exit(f"compare.py: {path}:{n}: not JSON ({e})")
    return out


def rows_of(m):  # modula's shapes: prefill "16x64 tokens", decode "batch 16, 32 steps ..."
    shape = m.get("shape", "")
    try:
        if shape.startswith("batch "):
            return int(shape[len("batch "):].split(",", 1)[0])
        return int(shape.split("x", 1)[0])
    except ValueError:
        return None


def main(modula_path, peer_path):
    modula, peer = lines(modula_path), lines(peer_path)
    print(f"{'workload':<9} {'rows':>4} {'variant':<8} {'modula tok/s':>13} {'llama.cpp tok/s':>16} {'modula / llama.cpp':>19}")
    for p in peer:
        if p.get("workload") == "check":
            continue
        m = [x for x in modula if x.get("workload") == p["workload"] and x.get("variant") == p["variant"]
             and rows_of(x) == p["rows"]]
        mine = m[0]["tokens_per_s"] if m else float("nan")
        print(f"{p['workload']:<9} {p['rows']:>4} {p['variant']:<8} {mine:>13.1f} {p['tokens_per_s']:>16.1f} "
              f"{mine / p['tokens_per_s']:>18.2f}x")
    for p in peer:
        if p.get("workload") == "check":
            print(f"same model: llama.cpp's greedy tokens equal modula's for {p['greedy_tokens_equal_to_modula']}"
                  f" of {p['of']} ({p['variant']})")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: compare.py MODULA.jsonl LLAMA_CPP.jsonl")
    main(sys.argv[1], sys.argv[2])
