// Tokenizer training from text: byte-level BPE (GPT-2), WordPiece (BERT) and Unigram
// (SentencePiece), written as a Hugging Face tokenizer.json that Tokenizer::from_file and
// HF `tokenizers` load (HF and modula give the same ids for it).
//
//   modula::text::TrainerOptions opts;          // byte-level BPE, vocab 8000
//   opts.vocab_size = 4000;
//   modula::text::TokenizerTrainer trainer(opts);  // throws ConfigError for bad options
//   trainer.feed_file("corpus.txt");               // streamed line by line, words counted
//   trainer.train().save("tokenizer.json");
//
// Models and the pipeline each writes (normalizer / pre-tokenizer / post-processor / decoder):
//   bpe        Lowercase if lowercase / ByteLevel (GPT-2 regex, no prefix space) / ByteLevel /
//              ByteLevel. Alphabet: all 256 byte symbols; merges by highest pair count, ties
//              to the smallest (left id, right id): the merges and ids of HF BpeTrainer
//              (checked against tokenizers 0.23.2, tests/fixtures/hf/trainer).
//   wordpiece  BertNormalizer / BertPreTokenizer / TemplateProcessing "[CLS] $A [SEP]" (when
//              both are special tokens) / WordPiece. HF WordPieceTrainer: BPE with the "##"
//              continuing prefix over the limit_alphabet most frequent characters ("##x"
//              symbols numbered in sorted-word order, where HF's follow its hash order).
//   unigram    NFKC (+ Lowercase) / Metaspace "▁" / none / Metaspace. SentencePiece EM:
//              seed substrings, E-step over each word's lattice, Bayesian M-step (digamma),
//              pruning by likelihood loss to shrinking_factor until 1.1 x vocab_size;
//              scores are log-probabilities (specials 0), pieces sorted by score. Not
//              bit-identical to HF UnigramTrainer (float sums, ties).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace modula::text {

enum class TrainerModel { Bpe, WordPiece, Unigram };

// "bpe", "wordpiece" or "unigram"; ConfigError naming the valid ones otherwise.
TrainerModel parse_trainer_model(const std::string& name);
const char* trainer_model_name(TrainerModel model);

struct TrainerOptions {
  TrainerModel model = TrainerModel::Bpe;
  int64_t vocab_size = 8000;  // final size, special tokens and alphabet included
  int64_t min_frequency = 2;  // bpe/wordpiece: a pair merges only when seen this often (>= 1)
  // Ids 0..n-1 in this order; empty: default_special_tokens(model). wordpiece and unigram put
  // their unk token first when the list lacks it.
  std::vector<std::string> special_tokens;
  bool lowercase = false;         // wordpiece: BertNormalizer lowercase (+ accents stripped)
  int64_t limit_alphabet = 1000;  // wordpiece: initial characters kept, most frequent first (0: all)
  // unigram (SentencePiece names and defaults)
  std::string unk_token;           // empty: "[UNK]" (wordpiece), "<unk>" (unigram)
  int64_t max_piece_length = 16;   // in characters
  int64_t seed_size = 1000000;     // seed substrings before EM
  int64_t n_sub_iterations = 2;    // EM steps between prunings
  double shrinking_factor = 0.75;  // pieces kept per pruning (0, 1)

  // Throws modula::ConfigError("[tokenizer-trainer] <field> ...") for the first bad field.
  void validate() const;
  // unk_token or the model's default ("" for bpe, which never needs one).
  std::string resolved_unk_token() const;
  // special_tokens or the model defaults, with the unk token first when missing.
  std::vector<std::string> resolved_special_tokens() const;
};

// bpe: <|endoftext|>; wordpiece: [PAD] [UNK] [CLS] [SEP] [MASK]; unigram: <unk> <s> </s>.
std::vector<std::string> default_special_tokens(TrainerModel model);

struct TrainedTokenizer {
  std::string json;                          // the tokenizer.json text
  int64_t vocab_size = 0;                    // special tokens included
  int64_t merges = 0;                        // bpe/wordpiece: merges learned
  void save(const std::string& path) const;  // throws std::runtime_error when unwritable
};

class TokenizerTrainer {
 public:
  explicit TokenizerTrainer(TrainerOptions options);  // validates options
  ~TokenizerTrainer();
  TokenizerTrainer(const TokenizerTrainer&) = delete;
  TokenizerTrainer& operator=(const TokenizerTrainer&) = delete;

  // One line or document: normalized and pre-tokenized with the pipeline written to the
  // tokenizer.json, then its words counted. Invalid UTF-8 reads as U+FFFD.
  void feed(std::string_view text);
  // feed() for each line (bpe keeps the "\n", as HF train_from_files); throws
  // std::runtime_error naming the file when it cannot be read.
  void feed_file(const std::string& path);
  // A word as the model sees it (after pre-tokenization), counted `count` times.
  void add_word(const std::string& word, int64_t count = 1);

  int64_t lines() const;  // feed() calls
  int64_t unique_words() const;

  // Throws ConfigError when nothing was fed, or when vocab_size does not exceed the
  // corpus alphabet plus the special tokens (wordpiece, unigram).
  TrainedTokenizer train() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace modula::text
