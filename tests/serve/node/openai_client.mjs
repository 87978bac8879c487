// Drives `modula serve` with the official openai npm client: models, completions with the
// base and three adapters (greedy, equal to `modula generate` token for token), streaming,
// chat (a template in tokenizer_config.json) streamed and not, a composition as the model,
// n and logprobs, an unknown model, then SIGTERM. Usage: node openai_client.mjs MODULA_BINARY FIXTURES
// Exit 77 (CTest: skipped) when `npm ci` has not installed the client.
import { spawn, spawnSync } from "node:child_process";
import { copyFileSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { strict as assert } from "node:assert";

let OpenAI;
try {
  ({ default: OpenAI } = await import("openai"));
} catch {
  console.log("openai client not installed (npm ci in tests/serve/node): skipped");
  process.exit(77);
}

const [modula, fixtures] = process.argv.slice(2);
const model = `${fixtures}/hf/models/llama`;
// The fixture tokenizer plus a tokenizer_config.json with a chat template: messages joined
// by spaces, " re" as the generation prompt.
const tokenizer = mkdtempSync(join(tmpdir(), "modula-openai-"));
copyFileSync(`${fixtures}/hf/tokenizers/bytelevel-bpe.json`, join(tokenizer, "tokenizer.json"));
writeFileSync(join(tokenizer, "tokenizer_config.json"), JSON.stringify({
  chat_template: "{% for m in messages %}{{ m['content'] }}{% if not loop.last %} {% endif %}{% endfor %}" +
    "{% if add_generation_prompt %} re{% endif %}",
}));
const adapters = { lora: "llama-lora", ia3: "llama-ia3", prefix: "llama-prefix" };
const prompt = [5, 17, 42, 99, 7];

const args = ["serve", "-m", model, "-t", tokenizer, "--port", "0", "--api-key", "k"];
for (const [name, dir] of Object.entries(adapters)) args.push("--adapter", `${name}=${fixtures}/hf/adapters/${dir}`);
const server = spawn(modula, args, { stdio: ["ignore", "inherit", "pipe"] });
const exited = new Promise((resolve) => server.on("exit", (code) => resolve(code)));
let startup;
const baseURL = await new Promise((resolve, reject) => {
  let err = "";
  server.stderr.on("data", (d) => {
    err += d;
    const m = err.match(/http:\/\/[0-9.]+:[0-9]+\/v1/);
    if (m) resolve(m[0]);
  });
  server.on("exit", () => reject(new Error("server exited: " + err)));
  startup = setTimeout(() => reject(new Error("server did not start: " + err)), 60000);
});
clearTimeout(startup);

// `modula generate --prompt-ids` prints the greedy ids.
function generate(adapter, n) {
  const a = ["generate", "-m", model, "--prompt-ids", prompt.join(","), "-n", String(n), "--ignore-eos"];
  if (adapter) a.push("-a", `${fixtures}/hf/adapters/${adapters[adapter]}`);
  const r = spawnSync(modula, a, { encoding: "utf8" });
  assert.equal(r.status, 0, r.stderr);
  return r.stdout.trim().split(/\s+/).map(Number);
}

try {
  const client = new OpenAI({ baseURL, apiKey: "k", maxRetries: 0 });
  const ids = (await client.models.list()).data.map((m) => m.id);
  assert.deepEqual(ids, ["llama", "lora", "ia3", "prefix"]);
  for (const name of ["llama", "lora", "ia3", "prefix"]) {
    const body = { model: name, prompt, max_tokens: 6, temperature: 0, ignore_eos: true, return_token_ids: true };
    const out = await client.completions.create(body);
    assert.deepEqual(out.choices[0].token_ids, generate(name === "llama" ? "" : name, 6), name);
    assert.equal(out.usage.completion_tokens, 6);
    let text = "";
    for await (const chunk of await client.completions.create({ ...body, stream: true })) text += chunk.choices[0]?.text ?? "";
    assert.equal(text, out.choices[0].text, name + " (stream)");
  }
  // Chat, streamed and not: the reply is the completion of the rendered text.
  const messages = [{ role: "system", content: "in" }, { role: "user", content: "se" }];
  const chat = await client.chat.completions.create({ model: "ia3", messages, max_tokens: 6, temperature: 0,
    ignore_eos: true });
  assert.equal(chat.object, "chat.completion");
  assert.equal(chat.choices[0].message.role, "assistant");
  const rendered = await client.completions.create({ model: "ia3", prompt: "in se re", max_tokens: 6, temperature: 0,
    ignore_eos: true, add_special_tokens: false });
  assert.equal(chat.choices[0].message.content, rendered.choices[0].text);
  let streamed = "";
  for await (const chunk of await client.chat.completions.create({ model: "ia3", messages, max_tokens: 6,
    temperature: 0, ignore_eos: true, stream: true })) streamed += chunk.choices[0]?.delta?.content ?? "";
  assert.equal(streamed, chat.choices[0].message.content, "chat (stream)");
  // A composition as the model, n choices, logprobs.
  const composed = await client.completions.create({ model: "stack(prefix, lora)", prompt, max_tokens: 4,
    temperature: 0, ignore_eos: true, return_token_ids: true, n: 2, logprobs: 2 });
  assert.equal(composed.choices.length, 2);
  assert.deepEqual(composed.choices[0].token_ids, composed.choices[1].token_ids, "greedy choices agree");
  assert.equal(composed.choices[0].logprobs.token_logprobs.length, 4);
  assert.ok(composed.choices[0].logprobs.token_logprobs.every((x) => x <= 0));
  await assert.rejects(client.completions.create({ model: "nope", prompt, max_tokens: 2 }), (e) => e.status === 404);
  await assert.rejects(new OpenAI({ baseURL, apiKey: "wrong", maxRetries: 0 }).models.list(), (e) => e.status === 401);
  await assert.rejects(client.completions.create({ model: "lora", prompt, max_tokens: -1 }), (e) => e.status === 400);
  console.log("openai client: all checks passed");
} finally {
  server.kill("SIGTERM");
  rmSync(tokenizer, { recursive: true, force: true });
}
assert.equal(await exited, 0, "the server exits cleanly on SIGTERM");
process.exit(0);
