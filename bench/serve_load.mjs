// Load generator for `modula serve` on loopback: starts the server for each variant, sends
// the same requests from N concurrent clients (streaming, so time to first token is the
// client's), bounded in count and time, and prints one JSON line per variant plus a table:
// generated tokens/s, requests/s, p50/p99 time to first token and request latency, and the
// server's own /metrics (mean batch rows per decode step, distinct module sets per step).
//
//   node bench/serve_load.mjs --modula build/apps/modula/modula \
//        --model tests/fixtures/hf/models/llama --tokenizer tests/fixtures/hf/tokenizers/bytelevel-bpe.json \
//        --adapter tests/fixtures/hf/adapters/llama-lora [--clients 8] [--requests 96] [--max-tokens 48]
//        [--quick]
//
// Variants: "one at a time" (--max-batch 1: the same requests served one after another),
// "continuous batching" (--max-batch = clients, every row the same adapter), and
// "16 distinct adapters" (continuous batching, request i uses adapter i mod 16: sixteen copies of
// --adapter served as sixteen module sets, so each step mixes up to 16 sets).
import { spawn } from "node:child_process";
import { mkdtempSync, mkdirSync, copyFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const args = process.argv.slice(2);
const opt = (name, def) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : def;
};
const quick = args.includes("--quick");
const modula = opt("modula", "build/apps/modula/modula");
const model = opt("model", "tests/fixtures/hf/models/llama");
const tokenizer = opt("tokenizer", "tests/fixtures/hf/tokenizers/bytelevel-bpe.json");
const adapter = opt("adapter", "tests/fixtures/hf/adapters/llama-lora");
const clients = Number(opt("clients", quick ? 4 : 8));
const requests = Number(opt("requests", quick ? 12 : 96));
const maxTokens = Number(opt("max-tokens", quick ? 8 : 48));
const timeLimit = Number(opt("time-limit", quick ? 30 : 300)) * 1000;
const threads = opt("threads", "2");

// Sixteen copies of the adapter: distinct module sets with the same shapes.
const dir = mkdtempSync(join(tmpdir(), "modula-serve-load-"));
for (let i = 0; i < 16; ++i) {
  mkdirSync(join(dir, `a${i}`));
  for (const f of ["adapter_config.json", "adapter_model.safetensors"]) copyFileSync(join(adapter, f), join(dir, `a${i}`, f));
}

async function start(maxBatch) {
  const argv = ["serve", "-m", model, "-t", tokenizer, "--port", "0", "--max-batch", String(maxBatch),
    "--adapter-dir", dir, "--max-resident", "16", "--max-queue", String(requests + 1)];
  const server = spawn(modula, argv, { stdio: ["ignore", "ignore", "pipe"],
    env: { ...process.env, OMP_NUM_THREADS: threads, MKL_NUM_THREADS: threads } });
  const exited = new Promise((resolve) => server.on("exit", resolve));
  const url = await new Promise((resolve, reject) => {
    let err = "";
    server.stderr.on("data", (d) => {
      err += d;
      const m = err.match(/http:\/\/[0-9.]+:[0-9]+/);
      if (m) resolve(m[0]);
    });
    server.on("exit", () => reject(new Error("server exited: " + err)));
  });
  return { server, url, exited };
}

// One streamed completion: time to first token, latency, generated tokens.
async function complete(url, modelName, prompt) {
  const t0 = performance.now();
  const res = await fetch(`${url}/v1/completions`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ model: modelName, prompt, max_tokens: maxTokens, temperature: 0, ignore_eos: true,
      stream: true, stream_options: { include_usage: true } }),
  });
  if (res.status !== 200) throw new Error(`HTTP ${res.status}: ${await res.text()}`);
  let ttft = null, tokens = 0, buf = "";
  const decoder = new TextDecoder();
  for await (const chunk of res.body) {
    if (ttft === null) ttft = performance.now() - t0;
    buf += decoder.decode(chunk, { stream: true });
    let i;
    while ((i = buf.indexOf("\n\n")) >= 0) {
      const event = buf.slice(0, i);
      buf = buf.slice(i + 2);
      if (!event.startsWith("data: {")) continue;
      const j = JSON.parse(event.slice(6));
      if (j.error) throw new Error(j.error.message);
      if (j.usage) tokens = j.usage.completion_tokens;
    }
  }
  return { ttft, latency: performance.now() - t0, tokens };
}

const quantile = (xs, q) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(q * s.length))];
};
const metric = (text, name) => Number((text.match(new RegExp(`^${name} ([0-9.e+-]+)$`, "m")) || [])[1]);

async function run(label, maxBatch, modelOf) {
  const { server, url, exited } = await start(maxBatch);
  const results = [];
  let next = 0;
  const deadline = performance.now() + timeLimit;
  // Warm-up: each module set once (loads are not what this measures).
  for (let i = 0; i < Math.min(16, requests); ++i) await complete(url, modelOf(i), [5, 6, 7]);
  const t0 = performance.now();
  await Promise.all(Array.from({ length: clients }, async () => {
    while (next < requests && performance.now() < deadline) {
      const i = next++;
      const prompt = Array.from({ length: 8 + (i % 8) }, (_, k) => 3 + ((i * 37 + k * 11) % 500));
      results.push(await complete(url, modelOf(i), prompt));
    }
  }));
  const seconds = (performance.now() - t0) / 1000;
  const metrics = await (await fetch(`${url}/metrics`)).text();
  server.kill("SIGTERM");
  await exited;
  const tokens = results.reduce((a, r) => a + r.tokens, 0);
  return {
    variant: label, max_batch: maxBatch, clients, requests: results.length, max_tokens: maxTokens,
    seconds: +seconds.toFixed(3), tokens_per_s: +(tokens / seconds).toFixed(1),
    requests_per_s: +(results.length / seconds).toFixed(2),
    ttft_p50_ms: +quantile(results.map((r) => r.ttft), 0.5).toFixed(1),
    ttft_p99_ms: +quantile(results.map((r) => r.ttft), 0.99).toFixed(1),
    latency_p50_ms: +quantile(results.map((r) => r.latency), 0.5).toFixed(1),
    latency_p99_ms: +quantile(results.map((r) => r.latency), 0.99).toFixed(1),
    mean_batch_rows: +(metric(metrics, "modula_decode_rows_total") / metric(metrics, "modula_decode_steps_total")).toFixed(2),
    max_sets_per_step: metric(metrics, "modula_step_module_sets_max"),
  };
}

const rows = [];
try {
  rows.push(await run("one at a time", 1, () => "a0"));
  rows.push(await run("continuous batching", clients, () => "a0"));
  rows.push(await run("16 distinct adapters", clients, (i) => `a${i % 16}`));
} finally {
  rmSync(dir, { recursive: true, force: true });
}
for (const r of rows) console.log(JSON.stringify(r));
const base = rows[0].tokens_per_s, one = rows[1].tokens_per_s;
console.log("\nvariant                 tok/s   req/s  TTFT p50/p99 ms   latency p50/p99 ms  rows/step  ratio");
for (const r of rows) {
  const ratio = r === rows[0] ? "1.00x" : r === rows[1] ? `${(r.tokens_per_s / base).toFixed(2)}x one-at-a-time`
    : `${(r.tokens_per_s / one).toFixed(2)}x one adapter`;
  console.log(`${r.variant.padEnd(22)} ${String(r.tokens_per_s).padStart(7)} ${String(r.requests_per_s).padStart(7)}` +
    `  ${`${r.ttft_p50_ms}/${r.ttft_p99_ms}`.padStart(15)}  ${`${r.latency_p50_ms}/${r.latency_p99_ms}`.padStart(18)}` +
    `  ${String(r.mean_batch_rows).padStart(9)}  ${ratio}`);
}
