#!/usr/bin/env python3
"""Load generator for `modula serve` on loopback (Python standard library only).

Starts the server for each variant, sends the same requests from N concurrent clients
(streaming, so time to first token is the client's), bounded in count and time, and prints
one JSON line per variant plus a table: generated tokens/s, requests/s, p50/p99 time to
first token and request latency, and the server's /metrics (mean batch rows per decode
step, most module sets in one step).

  python3 bench/serve_load.py --modula build/apps/modula/modula \\
      --model tests/fixtures/hf/models/llama --tokenizer tests/fixtures/hf/tokenizers/bytelevel-bpe.json \\
      --adapter tests/fixtures/hf/adapters/llama-lora [--clients 8] [--requests 96] [--max-tokens 48] [--quick]

Variants, all over the same requests:
  sequential            one client, one request after another (--max-batch 1)
  one at a time         N clients, the server decodes one request at a time (--max-batch 1)
  continuous batching   N clients, --max-batch N, every request the same adapter
  16 distinct adapters  N clients, --max-batch N, request i uses adapter i mod 16 (sixteen
                        copies of --adapter served as sixteen module sets via --adapter-dir)
  ... 2N rows           the last two again with 2N clients and --max-batch 2N (16 by default),
                        so one step can hold all sixteen adapters
"""
import argparse
import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time


def start(a, adapter_dir, max_batch):
    argv = [a.modula, "serve", "-m", a.model, "-t", a.tokenizer, "--port", "0", "--max-batch", str(max_batch),
            "--adapter-dir", adapter_dir, "--max-resident", "16", "--max-queue", str(a.requests + 16)]
    env = dict(os.environ)
    if a.threads:
        env["OMP_NUM_THREADS"] = str(a.threads)
    server = subprocess.Popen(argv, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env, text=True)
    deadline = time.time() + 60
    line = ""
    while time.time() < deadline:
        line = server.stderr.readline()
        m = re.search(r"http://([0-9.]+):([0-9]+)", line)
        if m:
            threading.Thread(target=server.stderr.read, daemon=True).start()  # keep draining
            return server, m.group(1), int(m.group(2))
        if server.poll() is not None:
            break
    server.kill()
    sys.exit(f"serve_load: the server did not start: {line}")


def complete(host, port, model, prompt, max_tokens):
    """One streamed completion: (time to first token, latency, generated tokens)."""
    body = json.dumps({"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
                       "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}})
    t0 = time.perf_counter()
    c = http.client.HTTPConnection(host, port, timeout=600)
    c.request("POST", "/v1/completions", body=body, headers={"Content-Type": "application/json"})
    r = c.getresponse()
    if r.status != 200:
        raise RuntimeError(f"HTTP {r.status}: {r.read()[:200]}")
    ttft, tokens = None, 0
    for line in r:
        if ttft is None:
            ttft = time.perf_counter() - t0
        if line.startswith(b"data: {"):
            j = json.loads(line[6:])
            if "error" in j:
                raise RuntimeError(j["error"]["message"])
            if j.get("usage"):
                tokens = j["usage"]["completion_tokens"]
    c.close()
    return ttft, time.perf_counter() - t0, tokens


def quantile(xs, q):
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def metric(text, name):
    m = re.search(rf"^{name} ([0-9.e+-]+)$", text, re.M)
    return float(m.group(1)) if m else float("nan")


def run(a, adapter_dir, label, max_batch, clients, model_of):
    server, host, port = start(a, adapter_dir, max_batch)
    try:
        for i in range(min(16, a.requests, a.warmup)):  # warm-up: each module set loaded once (not measured)
            complete(host, port, model_of(i), [5, 6, 7], 2)
        results, lock, nxt = [], threading.Lock(), [0]
        deadline = time.time() + a.time_limit

        def client():
            while time.time() < deadline:
                with lock:
                    i = nxt[0]
                    if i >= a.requests:
                        return
                    nxt[0] += 1
                prompt = [3 + (i * 37 + k * 11) % 500 for k in range(8 + i % 8)]
                r = complete(host, port, model_of(i), prompt, a.max_tokens)
                with lock:
                    results.append(r)

        t0 = time.perf_counter()
        threads = [threading.Thread(target=client) for _ in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        seconds = time.perf_counter() - t0
        c = http.client.HTTPConnection(host, port)
        c.request("GET", "/metrics")
        metrics = c.getresponse().read().decode()
        c.close()  # an idle keep-alive connection would hold the server's shutdown for its timeout
    finally:
        server.terminate()
        server.wait()
    tokens = sum(r[2] for r in results)
    ms = lambda x: round(1000 * x, 1)
    return {"variant": label, "max_batch": max_batch, "clients": clients, "requests": len(results),
            "max_tokens": a.max_tokens, "seconds": round(seconds, 3), "tokens_per_s": round(tokens / seconds, 1),
            "requests_per_s": round(len(results) / seconds, 2),
            "ttft_p50_ms": ms(quantile([r[0] for r in results], 0.5)),
            "ttft_p99_ms": ms(quantile([r[0] for r in results], 0.99)),
            "latency_p50_ms": ms(quantile([r[1] for r in results], 0.5)),
            "latency_p99_ms": ms(quantile([r[1] for r in results], 0.99)),
            "mean_batch_rows": round(metric(metrics, "modula_decode_rows_total") /
                                     metric(metrics, "modula_decode_steps_total"), 2),
            "max_sets_per_step": metric(metrics, "modula_step_module_sets_max")}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--modula", default="build/apps/modula/modula")
    p.add_argument("--model", default="tests/fixtures/hf/models/llama")
    p.add_argument("--tokenizer", default="tests/fixtures/hf/tokenizers/bytelevel-bpe.json")
    p.add_argument("--adapter", default="tests/fixtures/hf/adapters/llama-lora")
    p.add_argument("--clients", type=int)
    p.add_argument("--requests", type=int)
    p.add_argument("--max-tokens", type=int)
    p.add_argument("--time-limit", type=float, help="seconds per variant")
    p.add_argument("--threads", type=int, default=0, help="the server's OMP_NUM_THREADS (0: libtorch's default)")
    p.add_argument("--quick", action="store_true", help="seconds: 4 clients, 8 requests of 8 tokens")
    a = p.parse_args()
    a.clients = a.clients or (4 if a.quick else 8)
    a.requests = a.requests or (8 if a.quick else 96)
    a.max_tokens = a.max_tokens or (8 if a.quick else 48)
    a.time_limit = a.time_limit or (30 if a.quick else 300)
    a.warmup = 2 if a.quick else 16
    adapter_dir = tempfile.mkdtemp(prefix="modula-serve-load-")
    try:
        for i in range(16):
            os.mkdir(os.path.join(adapter_dir, f"a{i}"))
            for f in ("adapter_config.json", "adapter_model.safetensors"):
                shutil.copy(os.path.join(a.adapter, f), os.path.join(adapter_dir, f"a{i}", f))
        wide = 2 * a.clients  # 16 rows by default: room for 16 distinct adapters in one step
        rows = [run(a, adapter_dir, "sequential", 1, 1, lambda i: "a0"),
                run(a, adapter_dir, "one at a time", 1, a.clients, lambda i: "a0"),
                run(a, adapter_dir, "continuous batching", a.clients, a.clients, lambda i: "a0"),
                run(a, adapter_dir, "16 distinct adapters", a.clients, a.clients, lambda i: f"a{i % 16}"),
                run(a, adapter_dir, f"one adapter, {wide} rows", wide, wide, lambda i: "a0"),
                run(a, adapter_dir, f"16 adapters, {wide} rows", wide, wide, lambda i: f"a{i % 16}")]
    finally:
        shutil.rmtree(adapter_dir, ignore_errors=True)
    for r in rows:
        print(json.dumps(r))
    seq, one, batched = rows[0]["tokens_per_s"], rows[1]["tokens_per_s"], rows[2]["tokens_per_s"]
    print("\nvariant                  tok/s   req/s  TTFT p50/p99 ms  latency p50/p99 ms  rows/step  ratio")
    ratios = ["1.00x", f"{one / seq:.2f}x sequential",
              f"{batched / one:.2f}x one at a time, {batched / seq:.2f}x sequential",
              f"{rows[3]['tokens_per_s'] / batched:.2f}x one adapter", "1.00x",
              f"{rows[5]['tokens_per_s'] / rows[4]['tokens_per_s']:.2f}x one adapter"]
    for r, ratio in zip(rows, ratios):
        print(f"{r['variant']:<23} {r['tokens_per_s']:>7} {r['requests_per_s']:>7} "
              f"{str(r['ttft_p50_ms']) + '/' + str(r['ttft_p99_ms']):>16} "
              f"{str(r['latency_p50_ms']) + '/' + str(r['latency_p99_ms']):>19} {r['mean_batch_rows']:>9}  {ratio}")


if __name__ == "__main__":
    main()
