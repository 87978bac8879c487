// The user's whole loop through the CLI on real text from a Debian package (fortunes):
// tokenizer train → pretrain → train two LoRA adapters → eval → predict → merge → export →
// eval of the export. Each step's output is checked, and the numbers must say something:
// the pretrained model beats a uniform guess, each adapter lowers the perplexity of its own
// kind of text, and the exported model scores what the base with the merged adapter scores.
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "modula/util/fs.h"
#include "support/process.h"
#include "support/temp_dir.h"

namespace {

using modula::testing::TempDir;
using nlohmann::json;

const std::string kFortunes = "/usr/share/games/fortunes";

// The fortunes of one file (entries separated by "%" lines), each joined into one line.
std::vector<std::string> fortunes(const std::string& name) {
  std::ifstream in(kFortunes + "/" + name);
  std::vector<std::string> out;
  std::string line, cur;
  while (std::getline(in, line)) {
    if (line == "%") {
      if (!cur.empty() && cur.size() < 400) out.push_back(cur);
      cur.clear();
      continue;
    }
    for (char& c : line)
      if (c == '\t') c = ' ';
    cur += (cur.empty() ? "" : " ") + line;
  }
  return out;
}

void write_lines(const std::string& path, const std::vector<std::string>& lines) {
  std::ofstream out(path);
  for (const auto& l : lines) out << l << "\n";
}

// JSONL records {"text": ...} (or {"prompt": ...}) of lines [from, to).
void write_records(const std::string& path, const std::vector<std::string>& lines, size_t from, size_t to,
                   const char* field = "text") {
  std::ofstream out(path);
  for (size_t i = from; i < to && i < lines.size(); ++i) out << json{{field, lines[i]}}.dump() << "\n";
}

void write_file(const std::string& path, const std::string& text) { std::ofstream(path) << text; }

// Runs the CLI; the test fails with the log when the exit status is not 0.
std::string cli(const TempDir& d, const std::vector<std::string>& args) {
  std::vector<std::string> argv = {MODULA_CLI};
  argv.insert(argv.end(), args.begin(), args.end());
  const std::string log = d / "cli.log";
  std::remove(log.c_str());
  auto t0 = std::chrono::steady_clock::now();
  int rc = modula::testing::wait_exit(modula::testing::spawn(argv, log));
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::string out = modula::testing::slurp(log);
  std::string cmd;
  for (const auto& a : args) cmd += a + " ";
  std::printf("%6.1f s  modula %s\n", s, cmd.substr(0, 60).c_str());
  EXPECT_EQ(rc, 0) << "modula " << cmd << "\n" << out;
  return out;
}

// The perplexity `modula eval --json` wrote.
double perplexity(const std::string& json_path) {
  auto j = json::parse(modula::testing::slurp(json_path));
  return j.at("results").at(0).at("metrics").at("perplexity").get<double>();
}

TEST(CliLoop, TokenizerPretrainAdaptersEvalPredictMergeExport) {
  if (!modula::fs::is_file(kFortunes + "/computers") || !modula::fs::is_file(kFortunes + "/politics"))
    GTEST_SKIP() << "Debian package 'fortunes' not installed (scripts/setup.sh --tests installs it)";
  TempDir d;
  // Pretraining text: general fortunes; adapters: computers vs politics (held out: the last 40).
  std::vector<std::string> general;
  for (const char* f : {"people", "wisdom", "science", "literature"})
    for (auto& s : fortunes(f)) general.push_back(s);
  auto comp = fortunes("computers"), pol = fortunes("politics");
  ASSERT_GT(general.size(), 1000u);
  ASSERT_GT(comp.size(), 400u);
  ASSERT_GT(pol.size(), 200u);
  const size_t nc = comp.size() - 40, np = pol.size() - 40;
  std::vector<std::string> corpus = general;
  corpus.insert(corpus.end(), comp.begin(), comp.begin() + nc);
  corpus.insert(corpus.end(), pol.begin(), pol.begin() + np);
  write_lines(d / "corpus.txt", corpus);
  write_records(d / "general.jsonl", general, 0, general.size() - 100);
  write_records(d / "general_eval.jsonl", general, general.size() - 100, general.size());
  write_records(d / "comp.jsonl", comp, 0, nc);
  write_records(d / "comp_eval.jsonl", comp, nc, comp.size());
  write_records(d / "pol.jsonl", pol, 0, np);
  write_records(d / "pol_eval.jsonl", pol, np, pol.size());

  // 1. A byte-level BPE of 512 tokens on the corpus.
  cli(d, {"tokenizer", "train", "--type", "bpe", "--vocab-size", "512", "--special-tokens", "<|endoftext|>", "-o",
          d / "tok.json", d / "corpus.txt"});
  auto tok = json::parse(modula::testing::slurp(d / "tok.json"));
  ASSERT_EQ(tok.at("model").at("type"), "BPE");
  EXPECT_EQ(tok.at("model").at("vocab").size(), 512u);  // special tokens included, as HF counts
  auto ids = cli(d, {"tokenize", "-t", d / "tok.json", "Computers are useless."});
  EXPECT_NE(ids.find_first_of("0123456789"), std::string::npos) << ids;

  // 2. Pretrain a tiny Llama from scratch.
  write_file(d / "config.json", json{{"model_type", "llama"},
                                     {"architectures", {"LlamaForCausalLM"}},
                                     {"vocab_size", 512},
                                     {"hidden_size", 64},
                                     {"intermediate_size", 128},
                                     {"num_hidden_layers", 2},
                                     {"num_attention_heads", 4},
                                     {"num_key_value_heads", 4},
                                     {"max_position_embeddings", 128},
                                     {"rms_norm_eps", 1e-6},
                                     {"rope_theta", 10000.0},
                                     {"bos_token_id", 0},
                                     {"eos_token_id", 0},
                                     {"tie_word_embeddings", false}}
                                    .dump(2));
  write_file(d / "pretrain.yaml",
             "model: config.json\ntokenizer: tok.json\noutput: pre\nseed: 0\n"
             "tasks:\n  - {name: lm, type: causal_lm, train: general.jsonl, eval: general_eval.jsonl, max_length: 64}\n"
             "optim: {lr: 3.0e-3, schedule: cosine, warmup_steps: 10, max_steps: 60, batch_size: 16}\n");
  cli(d, {"pretrain", d / "pretrain.yaml", "--threads", "2"});
  for (const char* f : {"config.json", "model.safetensors", "tokenizer.json"})
    EXPECT_TRUE(modula::fs::is_file(d / ("pre/model/" + std::string(f)))) << f;
  cli(d, {"eval", "--model", d / "pre/model", "--task", "causal_lm", "--data", d / "general_eval.jsonl", "--json",
          d / "e_general.json"});
  const double ppl_general = perplexity(d / "e_general.json");
  EXPECT_LT(ppl_general, 0.5 * 512) << "pretraining did not beat a uniform guess by 2x";

  // 3. Two LoRA adapters (all-linear, as documented) on the two kinds of text.
  for (const std::string name : {"comp", "pol"})
    write_file(d / (name + ".yaml"),
               "model: pre/model\noutput: run_" + name + "\nseed: 0\nmodules:\n  - {name: " + name +
                   ", config: {peft_type: LORA, r: 8, lora_alpha: 16, target_modules: all-linear}}\n"
                   "tasks:\n  - {name: " +
                   name + ", type: causal_lm, train: " + name + ".jsonl, eval: " + name +
                   "_eval.jsonl, max_length: 64}\n"
                   "optim: {lr: 5.0e-3, max_steps: 40, batch_size: 16}\n");
  cli(d, {"train", d / "comp.yaml", "--threads", "2"});
  cli(d, {"train", d / "pol.yaml", "--threads", "2"});
  const std::string ad_comp = d / "run_comp/modules/comp", ad_pol = d / "run_pol/modules/pol";
  auto cfg = json::parse(modula::testing::slurp(ad_comp + "/adapter_config.json"));
  EXPECT_EQ(cfg.value("task_type", ""), "CAUSAL_LM");
  EXPECT_TRUE(cfg.contains("base_model_name_or_path"));

  // 4. Eval: each adapter lowers the perplexity of its own kind of text below the base's.
  auto eval = [&](const std::string& model, const std::string& adapter, const std::string& data,
                  const std::string& out) {
    std::vector<std::string> a = {"eval", "--model", model, "--task", "causal_lm", "--data", data, "--json", out};
    if (!adapter.empty()) a.insert(a.end(), {"--adapter", adapter});
    cli(d, a);
    return perplexity(out);
  };
  const double base_comp = eval(d / "pre/model", "", d / "comp_eval.jsonl", d / "e1.json");
  const double base_pol = eval(d / "pre/model", "", d / "pol_eval.jsonl", d / "e2.json");
  const double comp_comp = eval(d / "pre/model", ad_comp, d / "comp_eval.jsonl", d / "e3.json");
  const double pol_pol = eval(d / "pre/model", ad_pol, d / "pol_eval.jsonl", d / "e4.json");
  EXPECT_LT(comp_comp, base_comp) << "the computers adapter did not help on computer fortunes";
  EXPECT_LT(pol_pol, base_pol) << "the politics adapter did not help on political fortunes";

  // 5. Predict: greedy completions from the adapted model, one JSONL line per prompt.
  write_records(d / "prompts.jsonl", {"Computers are", "The program", "A politician"}, 0, 3, "prompt");
  cli(d, {"predict", "--model", d / "pre/model", "--adapter", ad_comp, "--task", "causal_lm", "--data",
          d / "prompts.jsonl", "-n", "8", "-o", d / "pred.jsonl"});
  std::istringstream pred(modula::testing::slurp(d / "pred.jsonl"));
  std::string line;
  int lines = 0;
  while (std::getline(pred, line)) {
    auto r = json::parse(line);
    EXPECT_FALSE(r.at("completion").get<std::string>().empty()) << line;
    ++lines;
  }
  EXPECT_EQ(lines, 3);

  // 6. Merge the two all-linear adapters (TIES) and 7. export the merge into the model.
  cli(d, {"merge-adapters", "-m", d / "pre/model", "-a", ad_comp, "-a", ad_pol, "-w", "1", "-w", "1", "-c", "ties",
          "--density", "0.5", "-o", d / "merged"});
  ASSERT_TRUE(modula::fs::is_file(d / "merged/adapter_config.json"));
  cli(d, {"export", "-m", d / "pre/model", "-a", d / "merged", "-o", d / "exported"});
  ASSERT_TRUE(modula::fs::is_file(d / "exported/config.json"));

  // 8. The export scores what base + merged adapter scores, and differs from the base.
  const double merged = eval(d / "pre/model", d / "merged", d / "comp_eval.jsonl", d / "e5.json");
  const double exported = eval(d / "exported", "", d / "comp_eval.jsonl", d / "e6.json");
  EXPECT_NEAR(exported, merged, 1e-3 * merged);
  EXPECT_GT(std::abs(merged - base_comp), 1e-3 * base_comp) << "the merged adapter changed nothing";
  EXPECT_TRUE(std::isfinite(merged));
}

}  // namespace
