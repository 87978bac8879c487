// Tokenizer training (include/modula/text/trainer.h): each model trained on a small corpus,
// written as tokenizer.json and loaded back with Tokenizer::from_file; merges checked on a
// hand-countable corpus and on HF BpeTrainer's own unit-test example.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "modula/text/tokenizer.h"
#include "modula/text/trainer.h"
#include "modula/util/error.h"
#include "modula/util/fs.h"
#include "text/pre_tokenizers.h"
#include "text/trainers.h"

using modula::ConfigError;
using modula::text::TokenizerTrainer;
using modula::text::TrainerModel;
using modula::text::TrainerOptions;
using nlohmann::json;

namespace {

namespace fs = modula::fs;

// A deterministic corpus: words built from syllables (so that subwords repeat), some English
// words, digits and punctuation; single spaces, one sentence per line.
std::vector<std::string> corpus(size_t lines) {
  const char* syllables[] = {"ka",  "to",  "ri", "mon", "sel", "va", "nu", "pe", "lor", "di",
                             "qua", "shi", "be", "ten", "gra", "fo", "xi", "lu", "mar", "zen"};
  const char* words[] = {"the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "and", "of"};
  uint64_t state = 12345;
  auto next = [&](uint64_t n) {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    return (state >> 33) % n;
  };
  std::vector<std::string> out;
  for (size_t l = 0; l < lines; ++l) {
    std::string line;
    size_t n_words = 5 + next(6);
    for (size_t w = 0; w < n_words; ++w) {
      if (w) line += ' ';
      if (next(3) == 0) {
        line += words[next(10)];
      } else if (next(10) == 0) {
        line += std::to_string(next(1000));
      } else {
        for (size_t s = 0, n = 1 + next(3); s < n; ++s) line += syllables[next(20)];
      }
      if (w == 0 && next(2) == 0) line[0] = static_cast<char>(std::toupper(line[0]));
    }
    line += next(4) == 0 ? "," : ".";
    out.push_back(line);
  }
  return out;
}

struct Trained {
  json doc;
  std::unique_ptr<modula::text::Tokenizer> tok;
};

// Trains on the lines, writes tokenizer.json into a temp folder, loads it back.
Trained train(const TrainerOptions& options, const std::vector<std::string>& lines) {
  TokenizerTrainer trainer(options);
  for (const std::string& line : lines) trainer.feed(line);
  modula::text::TrainedTokenizer out = trainer.train();
  std::string dir = fs::make_temp_dir("modula-tok-train");
  std::string path = fs::join(dir, "tokenizer.json");
  out.save(path);
  Trained t{json::parse(out.json), modula::text::Tokenizer::from_file(path)};
  fs::remove_tree(dir);
  EXPECT_EQ(out.vocab_size, t.tok->vocab_size());
  return t;
}

std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

template <typename F>
std::string error_of(F f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "(no error)";
}

// HF tokenizers' BpeTrainer test_train: same words, same vocab and merge order.
TEST(TokenizerTrainer, LearnBpeMatchesHfBpeTrainerExample) {
  std::vector<modula::text::WordCount> words = {{"BERT", 1},  {"GPT-2", 1}, {"and", 1},    {"are", 2},
                                                {"big", 1},   {"blue", 1},  {"is", 2},     {"red", 1},
                                                {"roses", 1}, {"so", 1},    {"voilets", 1}};
  modula::text::BpeLearnConfig config;
  config.vocab_size = 30000;
  config.min_frequency = 2;
  modula::text::BpeLearned learned = modula::text::learn_bpe(words, config);
  std::vector<std::string> expected_vocab = {"-", "2", "B", "E", "G", "P", "R", "T", "a", "b",  "d",   "e", "g",
                                             "i", "l", "n", "o", "r", "s", "t", "u", "v", "re", "are", "is"};
  EXPECT_EQ(learned.vocab, expected_vocab);
  std::vector<std::pair<std::string, std::string>> expected_merges = {{"r", "e"}, {"a", "re"}, {"i", "s"}};
  EXPECT_EQ(learned.merges, expected_merges);
}

// HF tokenizers 0.23.2 BpeTrainer (defaults: vocab 30000, min_frequency 0, alphabet from the
// data) on tests/fixtures/hf/trainer/corpus.txt, written by scripts/hf_trainer_fixture.js:
// every merge and id the same, after the ByteLevel and the Bert pre-tokenizers.
TEST(TokenizerTrainer, LearnBpeMatchesHfTokenizersOnFixtureCorpus) {
  const std::string dir = std::string(MODULA_FIXTURES) + "/hf/trainer";
  std::ifstream fixture(dir + "/hf_bpe_trainer.json");
  const json expected = json::parse(fixture);
  const json pre_tokenizers = {{"bytelevel", {{"type", "ByteLevel"}, {"add_prefix_space", false}}},
                               {"bert", {{"type", "BertPreTokenizer"}}}};
  for (const auto& [mode, pre_json] : pre_tokenizers.items()) {
    auto pre = modula::text::make_pre_tokenizer(pre_json, "pre_tokenizer");
    std::map<std::string, int64_t> counts;
    std::ifstream in(dir + "/corpus.txt");
    for (std::string line; std::getline(in, line);) {
      if (!in.eof()) line += '\n';  // HF train_from_files keeps the newline
      for (const modula::text::Piece& w : pre->pre_tokenize({line, true})) ++counts[w.text];
    }
    modula::text::BpeLearnConfig config;
    config.vocab_size = 30000;
    modula::text::BpeLearned learned = modula::text::learn_bpe({counts.begin(), counts.end()}, config);
    const json& want = expected.at(mode);
    ASSERT_EQ(learned.merges.size(), want.at("merges").size()) << mode;
    for (size_t i = 0; i < learned.merges.size(); ++i) {
      const json& m = want.at("merges")[i];
      ASSERT_EQ(learned.merges[i], std::make_pair(m[0].get<std::string>(), m[1].get<std::string>()))
          << mode << " merge " << i;
    }
    EXPECT_EQ(learned.vocab, want.at("vocab").get<std::vector<std::string>>()) << mode;
  }
}

// "abab abab" x50 and "cd ef" x30: pair counts by hand (Ġ is the byte-level space).
//   (a,b) 200 -> ab; (ab,ab) 100 -> abab; (Ġ,abab) 50; then three pairs at 30, taken in
//   id order: (c,d), (e,f), and (Ġ,ef) once (e,f) merged. vocab 1 + 256 + 6 stops there.
TEST(TokenizerTrainer, BpeFirstMergesAreTheMostFrequentPairs) {
  std::vector<std::string> lines(50, "abab abab");
  lines.insert(lines.end(), 30, "cd ef");
  TrainerOptions o;
  o.vocab_size = 1 + 256 + 6;
  Trained t = train(o, lines);
  json expected = json::parse(R"([["a","b"],["ab","ab"],["\u0120","abab"],["c","d"],["e","f"],["\u0120","ef"]])");
  EXPECT_EQ(t.doc["model"]["merges"], expected);
  EXPECT_EQ(t.tok->vocab_size(), 263);
  EXPECT_EQ(t.tok->token_to_id("<|endoftext|>"), 0);
  EXPECT_EQ(t.tok->token_to_id("ab"), 257);
  EXPECT_EQ(t.tok->encode("abab abab"), (std::vector<int64_t>{258, 259}));
}

TEST(TokenizerTrainer, ByteLevelBpeRoundTripsAnyText) {
  std::vector<std::string> lines = corpus(300);
  TrainerOptions o;
  o.vocab_size = 600;
  o.special_tokens = {"<|endoftext|>", "<pad>"};
  Trained t = train(o, lines);
  EXPECT_EQ(t.tok->vocab_size(), 600);
  EXPECT_EQ(t.tok->token_to_id("<pad>"), 1);
  for (size_t i = 0; i < lines.size(); i += 7) EXPECT_EQ(t.tok->decode(t.tok->encode(lines[i])), lines[i]);
  std::string unseen = "Grüße, 世界! 🙂\n\ttabs  and  spaces\r\n";
  EXPECT_EQ(t.tok->decode(t.tok->encode(unseen)), unseen);
  EXPECT_EQ(t.tok->encode("<|endoftext|>"), std::vector<int64_t>{0});
  // Merged tokens make the corpus shorter than its bytes.
  EXPECT_LT(t.tok->encode(lines[0]).size(), lines[0].size() / 2);
  // Deterministic: the same input gives the same file.
  EXPECT_EQ(train(o, lines).doc, t.doc);
}

TEST(TokenizerTrainer, WordPieceBertStyle) {
  std::vector<std::string> lines = corpus(300);
  TrainerOptions o;
  o.model = TrainerModel::WordPiece;
  o.vocab_size = 300;
  o.lowercase = true;
  Trained t = train(o, lines);
  EXPECT_EQ(t.tok->vocab_size(), 300);
  const char* specials[] = {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"};
  for (int64_t id = 0; id < 5; ++id) EXPECT_EQ(t.tok->id_to_token(id), specials[id]);
  for (size_t i = 0; i < lines.size(); i += 7) {
    std::vector<int64_t> ids = t.tok->encode(lines[i]);
    ASSERT_GE(ids.size(), 3u);
    EXPECT_EQ(ids.front(), 2);
    EXPECT_EQ(ids.back(), 3);
    EXPECT_EQ(t.tok->decode(ids), lower(lines[i]));
  }
  // An unseen word: a first piece, then "##" pieces, nothing unknown.
  std::vector<int64_t> ids = t.tok->encode("zenfoxquadog", false);
  ASSERT_GE(ids.size(), 2u);
  EXPECT_EQ(t.tok->id_to_token(ids[0]).rfind("##", 0), std::string::npos);
  for (size_t i = 1; i < ids.size(); ++i) EXPECT_EQ(t.tok->id_to_token(ids[i]).rfind("##", 0), 0u);
  EXPECT_EQ(t.tok->decode(ids), "zenfoxquadog");
  EXPECT_EQ(t.doc["normalizer"]["type"], "BertNormalizer");
  EXPECT_EQ(t.doc["post_processor"]["type"], "TemplateProcessing");
}

TEST(TokenizerTrainer, UnigramLogProbPieces) {
  std::vector<std::string> lines = corpus(300);
  TrainerOptions o;
  o.model = TrainerModel::Unigram;
  o.vocab_size = 150;
  Trained t = train(o, lines);
  EXPECT_EQ(t.tok->vocab_size(), 150);
  EXPECT_EQ(t.doc["model"]["unk_id"], 0);
  const json& vocab = t.doc["model"]["vocab"];
  EXPECT_EQ(vocab[0][0], "<unk>");
  EXPECT_EQ(vocab[1][0], "<s>");
  EXPECT_EQ(vocab[2][0], "</s>");
  double previous = 0;
  for (size_t i = 3; i < vocab.size(); ++i) {
    double score = vocab[i][1].get<double>();
    EXPECT_LE(score, previous) << vocab[i][0];
    previous = score;
  }
  EXPECT_LT(previous, 0.0);
  // Probabilities of the non-special pieces sum to at most 1.
  double mass = 0;
  for (size_t i = 3; i < vocab.size(); ++i) mass += std::exp(vocab[i][1].get<double>());
  EXPECT_LE(mass, 1.0 + 1e-9);
  for (size_t i = 0; i < lines.size(); i += 7) EXPECT_EQ(t.tok->decode(t.tok->encode(lines[i])), lines[i]);
  // A new word of known syllables: known pieces only, which spell it.
  std::vector<int64_t> ids = t.tok->encode("kamontozen");
  std::string spelled;
  for (int64_t id : ids) {
    EXPECT_NE(id, 0);
    spelled += t.tok->id_to_token(id);
  }
  EXPECT_EQ(spelled, "\u2581kamontozen");
  EXPECT_LT(ids.size(), 10u);
}

TEST(TokenizerTrainer, BadOptionsNameTheField) {
  auto with = [](auto set) {
    TrainerOptions o;
    set(o);
    return error_of([&] { TokenizerTrainer trainer(o); });
  };
  EXPECT_NE(with([](TrainerOptions& o) { o.vocab_size = 200; }).find("vocab_size 200 must exceed the byte alphabet"),
            std::string::npos);
  EXPECT_NE(with([](TrainerOptions& o) { o.min_frequency = 0; }).find("[tokenizer-trainer] min_frequency"),
            std::string::npos);
  EXPECT_NE(with([](TrainerOptions& o) {
              o.model = TrainerModel::Unigram;
              o.shrinking_factor = 1.5;
            }).find("shrinking_factor"),
            std::string::npos);
  EXPECT_NE(with([](TrainerOptions& o) {
              o.special_tokens = {"<s>", "<s>"};
            }).find("special_tokens lists '<s>' twice"),
            std::string::npos);
  EXPECT_NE(with([](TrainerOptions& o) { o.unk_token = "<unk>"; }).find("unk_token is for wordpiece and unigram"),
            std::string::npos);
  EXPECT_THROW(modula::text::parse_trainer_model("bp"), ConfigError);
  EXPECT_NE(error_of([] { modula::text::parse_trainer_model("bp"); }).find("valid: bpe, wordpiece, unigram"),
            std::string::npos);

  // Data-dependent: the alphabet does not fit, nothing fed, a missing file.
  TrainerOptions o;
  o.model = TrainerModel::WordPiece;
  o.vocab_size = 10;
  TokenizerTrainer small(o);
  small.feed("abcdefghij");
  EXPECT_NE(error_of([&] { small.train(); }).find("vocab_size 10 must exceed the corpus alphabet (10 characters)"),
            std::string::npos);
  TokenizerTrainer empty(TrainerOptions{});
  EXPECT_THROW(empty.train(), ConfigError);
  EXPECT_NE(error_of([&] { empty.feed_file("/nonexistent/corpus.txt"); }).find("cannot open /nonexistent/corpus.txt"),
            std::string::npos);
}

TEST(TokenizerTrainer, FeedFileKeepsNewlinesForBpe) {
  std::string dir = fs::make_temp_dir("modula-tok-feed");
  std::string path = fs::join(dir, "corpus.txt");
  {
    std::ofstream out(path);
    for (int i = 0; i < 20; ++i) out << "one line\nanother line\n";
  }
  TokenizerTrainer trainer(TrainerOptions{});
  trainer.feed_file(path);
  fs::remove_tree(dir);
  EXPECT_EQ(trainer.lines(), 40);
  json doc = json::parse(trainer.train().json);
  EXPECT_TRUE(doc["model"]["vocab"].contains("\u010a"));  // "\n" as a byte-level symbol
  EXPECT_EQ(trainer.unique_words(), 4);                   // one, Ġline, Ċ, another
}

}  // namespace
