// llama.cpp's side of bench/llama_cpp/run.sh, through the prebuilt llama.cpp that npm's
// node-llama-cpp@3.21.1 ships: the same shapes as `modula bench` prefill / decode at the
// cpu size (prompts of 16 tokens, 32 greedy new tokens; prefill 64 tokens), on the GGUF
// files to_gguf.py wrote, with N threads. One JSON object per line on stdout:
//   prefill   16 sequences × 64 tokens in one batch           (variants none, single = LoRA a0)
//   decode    1 and 16 sequences, 32 new tokens each           (none, single)
//   decode    mixed16: 16 requests, request i with adapter a<i>; llama.cpp applies a LoRA
//             per context, so each runs on its adapter's context, one after another
//   check     llama.cpp's greedy tokens against modula's (models/reference.json)
// Usage: node bench.mjs DIR [--threads 2] [--iters 10]   (median of iters rounds after one warm-up)
import fs from "node:fs";
import path from "node:path";
import { getLlama, LlamaLogLevel } from "node-llama-cpp";

const args = process.argv.slice(2);
const dir = args[0];
const flag = (name, fallback) => {
  const i = args.indexOf(name);
  return i >= 0 ? Number(args[i + 1]) : fallback;
};
const threads = flag("--threads", 2), iters = flag("--iters", 10);
if (!dir || !fs.existsSync(path.join(dir, "model.gguf"))) {
  console.error("usage: node bench.mjs DIR [--threads N] [--iters N]  (DIR from run.sh: model.gguf, a0..a15.gguf)");
  process.exit(2);
}
const reference = JSON.parse(fs.readFileSync(path.join(dir, "models/reference.json"), "utf8"));
const prompt = reference.prompt;
const steps = reference.greedy.length;

const llama = await getLlama({ gpu: false, build: "never", logLevel: LlamaLogLevel.error, maxThreads: threads });
const model = await llama.loadModel({ modelPath: path.join(dir, "model.gguf"), gpuLayers: 0 });
// A context of `sequences` parallel sequences (llama.cpp batches them into one forward), with
// one LoRA adapter or none.
const context = async (adapter, sequences) =>
  model.createContext({
    contextSize: 128 * sequences, batchSize: 64 * sequences, sequences, threads: { ideal: threads, min: threads },
    ...(adapter ? { lora: { adapters: [{ filePath: path.join(dir, adapter + ".gguf"), scale: 1 }] } } : {}),
  });

const now = () => Number(process.hrtime.bigint()) / 1e9;
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const emit = (o) => console.log(JSON.stringify({ engine: "llama.cpp", threads, ...o }));

// Greedy on each sequence at once: prefill prompt[0..n-2] (untimed), then `steps` tokens from
// the last prompt token (each generated token one single-token decode step, as modula's).
async function generate(seqs) {
  await Promise.all(seqs.map(async (s) => {
    await s.clearHistory();
    await s.evaluateWithoutGeneratingNewTokens(prompt.slice(0, -1));
  }));
  const t0 = now();
  const tokens = await Promise.all(seqs.map(async (s) => {
    const out = [];
    for await (const token of s.evaluate(prompt.slice(-1), { temperature: 0 })) {
      out.push(token);
      if (out.length === steps) break;
    }
    return out;
  }));
  return { tokens: tokens[0], seconds: now() - t0 };
}

async function prefill(seqs, tokens) {
  await Promise.all(seqs.map((s) => s.clearHistory()));
  const t0 = now();
  await Promise.all(seqs.map((s) => s.evaluateWithoutGeneratingNewTokens(tokens)));
  return now() - t0;
}

async function timed(fn) {
  await fn();  // warm-up
  const xs = [];
  for (let i = 0; i < iters; i++) xs.push(await fn());
  return median(xs);
}

const long = Array.from({ length: 64 }, (_, i) => prompt[i % prompt.length]);
{  // first touch of the weights (mapped from the file) outside every measurement
  const ctx = await context(null, 1);
  await generate([ctx.getSequence()]);
  await ctx.dispose();
}
for (const adapter of [null, "a0"]) {
  const variant = adapter ? "single" : "none";
  for (const rows of [1, 16]) {
    const ctx = await context(adapter, rows);
    const seqs = Array.from({ length: rows }, () => ctx.getSequence());
    if (rows === 16) {
      const t = await timed(() => prefill(seqs, long));
      emit({ workload: "prefill", variant, rows, tokens: 64, median_s: t, tokens_per_s: (rows * 64) / t });
    }
    let tokens = [];
    const t = await timed(async () => {
      const g = await generate(seqs);
      tokens = g.tokens;
      return g.seconds;
    });
    emit({ workload: "decode", variant, rows, new_tokens: steps, median_s: t, tokens_per_s: (rows * steps) / t });
    if (rows === 1) {
      const expected = adapter ? reference.greedy_adapter_a0 : reference.greedy;
      let same = 0;
      while (same < steps && tokens[same] === expected[same]) same++;
      emit({ workload: "check", variant, greedy_tokens_equal_to_modula: same, of: steps });
    }
    await ctx.dispose();
  }
}

// 16 requests, 16 adapters: llama.cpp applies a LoRA per context, so each request runs on its
// adapter's context (created untimed), one after another.
const contexts = [];
for (let i = 0; i < 16; i++) contexts.push(await context("a" + i, 1));
const sequences = contexts.map((c) => c.getSequence());
const t = await timed(async () => {
  let total = 0;
  for (const s of sequences) total += (await generate([s])).seconds;
  return total;
});
emit({ workload: "decode", variant: "mixed16", rows: 16, new_tokens: steps, median_s: t, tokens_per_s: (16 * steps) / t,
       note: "16 requests with 16 adapters: a context per adapter, requests in turn" });
for (const c of contexts) await c.dispose();
await model.dispose();
