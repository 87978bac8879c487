// modula tokenizer train: a tokenizer.json from text files (modula::text::TokenizerTrainer).
#include <chrono>
#include <cstdio>
#include <iostream>

#include "commands.h"
#include "flags.h"
#include "modula/text/trainer.h"
#include "modula/util/error.h"
#include "modula/util/fs.h"

namespace modula::cli {

void add_tokenizer(CLI::App& app) {
  auto* cmd = app.add_subcommand("tokenizer", "Tokenizer tools: train a tokenizer.json on text files");
  cmd->require_subcommand(1);
  auto* train = cmd->add_subcommand(
      "train", "Train a byte-level BPE (GPT-2), WordPiece (BERT) or Unigram (SentencePiece) tokenizer");
  static std::string model = "bpe", output;
  static std::vector<std::string> files, specials;
  static text::TrainerOptions opts;
  train->add_option("--type", model, "bpe | wordpiece | unigram (the tokenizer model type)")
      ->check(CLI::IsMember({"bpe", "wordpiece", "unigram"}))
      ->capture_default_str();
  train->add_option("--vocab-size", opts.vocab_size, "Vocabulary size, special tokens included")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  train->add_option("--min-frequency", opts.min_frequency, "bpe/wordpiece: fewest occurrences of a pair to merge it")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  train
      ->add_option("--special-tokens", specials,
                   "Special tokens at ids 0..n-1, comma-separated (default: bpe <|endoftext|>; wordpiece "
                   "[PAD],[UNK],[CLS],[SEP],[MASK]; unigram <unk>,<s>,</s>)")
      ->delimiter(',');
  train->add_flag("--lowercase", opts.lowercase, "Lowercase the text (wordpiece: BertNormalizer lowercase)");
  train->add_option("--limit-alphabet", opts.limit_alphabet, "wordpiece: initial characters kept (0: all)")
      ->capture_default_str();
  flags::output(*train, output)->required()->description("tokenizer.json to write");
  train->add_option("files", files, "Text files, read line by line")->required()->check(CLI::ExistingFile);
  train->callback([] {
    auto start = std::chrono::steady_clock::now();
    opts.model = text::parse_trainer_model(model);
    opts.special_tokens = specials;
    try {
      text::TokenizerTrainer trainer(opts);
      for (const std::string& f : files) trainer.feed_file(f);
      text::TrainedTokenizer out = trainer.train();
      std::string dir = fs::parent(output);
      if (!fs::exists(dir)) fs::make_dirs(dir);
      out.save(output);
      double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      char time[32];
      std::snprintf(time, sizeof time, "%.2f s", seconds);
      std::cout << "wrote " << output << ": " << model << ", vocab " << out.vocab_size;
      if (opts.model != text::TrainerModel::Unigram) std::cout << " (" << out.merges << " merges)";
      std::cout << ", " << trainer.lines() << " lines, " << trainer.unique_words() << " unique words, " << time << "\n";
    } catch (const ConfigError& e) {  // a bad option value (also one the corpus shows): usage error
      std::cerr << "error: " << e.what() << "\n";
      throw CLI::RuntimeError(2);
    }
  });
}

}  // namespace modula::cli
