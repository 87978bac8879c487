// Regenerates tests/fixtures/hf/trainer/hf_bpe_trainer.json: HF tokenizers' BpeTrainer (its
// defaults: vocab 30000, min_frequency 0, no special tokens, alphabet from the data) on
// tests/fixtures/hf/trainer/corpus.txt, after the ByteLevel (no prefix space) and the Bert
// pre-tokenizers. tests/text/test_tokenizer_trainer.cpp checks modula's learner against it.
//
//   npm install tokenizers@0.23.2 && node scripts/hf_trainer_fixture.js
const fs = require("fs");
const os = require("os");
const path = require("path");
const { Tokenizer, BPE, byteLevelPreTokenizer, bertPreTokenizer } = require("tokenizers");

const dir = path.join(__dirname, "..", "tests", "fixtures", "hf", "trainer");
const out = {};
for (const [mode, pre] of [["bytelevel", byteLevelPreTokenizer(false, true)], ["bert", bertPreTokenizer()]]) {
  const tok = new Tokenizer(BPE.empty());
  tok.setPreTokenizer(pre);
  tok.train([path.join(dir, "corpus.txt")]);
  const file = path.join(os.tmpdir(), `hf-trainer-${mode}.json`);
  tok.save(file, false);
  const model = JSON.parse(fs.readFileSync(file, "utf8")).model;
  const vocab = Object.keys(model.vocab).sort((a, b) => model.vocab[a] - model.vocab[b]);
  const merges = model.merges.map((m) => (Array.isArray(m) ? m : m.split(" ")));
  out[mode] = { vocab, merges };
}
fs.writeFileSync(path.join(dir, "hf_bpe_trainer.json"), JSON.stringify(out));
