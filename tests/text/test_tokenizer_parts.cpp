// Unit tests of tokenizer pieces: GPT-2 regex, byte map, splitting, models, decoders.
#include <gtest/gtest.h>

#include "support/watchdog.h"
#include "text/added_tokens.h"
#include "text/byte_level.h"
#include "text/decoders.h"
#include "text/models.h"
#include "text/pre_tokenizers.h"
#include "text/split.h"
#include "text/unicode.h"

namespace modula::text {
namespace {

std::vector<std::string> gpt2_words(const std::string& text) {
  std::vector<std::string> out;
  for (auto [b, e] : gpt2_matches(text)) out.push_back(text.substr(b, e - b));
  return out;
}

std::vector<std::string> texts(const std::vector<Piece>& pieces) {
  std::vector<std::string> out;
  for (const Piece& p : pieces) out.push_back(p.text);
  return out;
}

TEST(Gpt2Regex, SplitsContractionsAndSpaces) {
  EXPECT_EQ(gpt2_words("don't  stop"), (std::vector<std::string>{"don", "'t", " ", " stop"}));
  EXPECT_EQ(gpt2_words("Hello world!! 123abc"), (std::vector<std::string>{"Hello", " world", "!!", " 123", "abc"}));
  EXPECT_EQ(gpt2_words("a \tb  "), (std::vector<std::string>{"a", " ", "\t", "b", "  "}));
  EXPECT_EQ(gpt2_words("they'll we've I'M"), (std::vector<std::string>{"they", "'ll", " we", "'ve", " I", "'", "M"}));
  EXPECT_EQ(gpt2_words("Grüße 🙂"), (std::vector<std::string>{"Grüße", " 🙂"}));
  EXPECT_TRUE(gpt2_words("").empty());
}

// The hand-written GPT-2 matcher agrees with the same pattern run through ICU (Split pre-tokenizer).
TEST(Gpt2Regex, AgreesWithIcuRegex) {
  Regex icu(R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)", "test");
  const std::vector<std::string> probes = {"don't  stop",
                                           "  leading and trailing  ",
                                           "tabs\tand\nnew\r\nlines",
                                           "x\v\vy \xC2\x85z",
                                           "nbsp\xC2\xA0here",
                                           "Ünïcödé cafe\xCC\x81 naïve",
                                           "日本語のテキスト 123abc",
                                           "emoji 🙂🙂 ok!?",
                                           "'s'S'll 'x ''",
                                           "   ",
                                           "a1b2 c3 ④⑤ ½",
                                           "$$$ ... ,,, !!!a"};
  for (const std::string& text : probes) EXPECT_EQ(gpt2_matches(text), icu.find_all(text)) << text;
}

TEST(ByteLevel, ByteMapRoundTrips) {
  std::string all;
  for (int b = 0; b < 256; ++b) all += static_cast<char>(b);
  std::string mapped = bytes_to_chars(all), back;
  ASSERT_TRUE(chars_to_bytes(mapped, back));
  EXPECT_EQ(back, all);
  EXPECT_EQ(byte_to_char(' '), U'\u0120');   // 'Ġ'
  EXPECT_EQ(byte_to_char('\n'), U'\u010A');  // 'Ċ'
  EXPECT_EQ(byte_to_char('a'), U'a');
  EXPECT_EQ(char_to_byte(U'\u0120'), ' ');
  EXPECT_EQ(char_to_byte(U'\u4E00'), -1);
}

TEST(ByteLevel, DecoderReplacesInvalidUtf8) {
  auto decoder = make_decoder(json{{"type", "ByteLevel"}}, "decoder");
  // 0xC3 alone is a truncated sequence; 'é' is 0xC3 0xA9.
  std::vector<std::string> out = decoder->decode_chain({bytes_to_chars("a\xC3"), bytes_to_chars("\xC3\xA9")});
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0], "a\xEF\xBF\xBD\xC3\xA9");
}

TEST(Unicode, LossyUtf8MatchesRust) {
  EXPECT_EQ(unicode::to_valid_utf8("ok"), "ok");
  // Maximal subparts: E2 82 is one U+FFFD, FF is another.
  EXPECT_EQ(unicode::to_valid_utf8("\xE2\x82\xFF"), "\xEF\xBF\xBD\xEF\xBF\xBD");
  EXPECT_EQ(unicode::lowercase("ÄÖÜ İ ß"), "äöü i\xCC\x87 ß");
}

TEST(WordPiece, OverlongAndUnmatchedWordsAreUnk) {
  json config = {{"type", "WordPiece"},
                 {"unk_token", "[UNK]"},
                 {"continuing_subword_prefix", "##"},
                 {"max_input_chars_per_word", 5},
                 {"vocab", {{"[UNK]", 0}, {"ab", 1}, {"##c", 2}, {"a", 3}, {"##b", 4}}}};
  auto model = make_model(config, "model");
  std::vector<int64_t> ids;
  model->tokenize("abc", ids);
  EXPECT_EQ(ids, (std::vector<int64_t>{1, 2}));
  ids.clear();
  model->tokenize("abcbcb", ids);  // 6 chars > 5
  EXPECT_EQ(ids, (std::vector<int64_t>{0}));
  ids.clear();
  model->tokenize("abx", ids);  // "##x" unknown: whole word is unk
  EXPECT_EQ(ids, (std::vector<int64_t>{0}));
}

TEST(WordPiece, UnkTokenMissingFromTheVocabIsAConfigError) {
  // Was accepted, failing only at the first unknown word of some later input.
  json config = {{"type", "WordPiece"}, {"unk_token", "[UNK]"}, {"vocab", {{"ab", 0}, {"##c", 1}}}};
  try {
    make_model(config, "model");
    ADD_FAILURE() << "accepted a WordPiece vocab without its unk_token";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("model.unk_token"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("[UNK]"), std::string::npos) << e.what();
  }
}

TEST(Bpe, MergesByRankAndFallsBackToBytes) {
  json config = {{"type", "BPE"},
                 {"byte_fallback", true},
                 {"vocab", {{"a", 0}, {"b", 1}, {"ab", 2}, {"aab", 3}, {"<0xC3>", 4}, {"<0xA9>", 5}}},
                 {"merges", json::array({json::array({"a", "b"}), json::array({"a", "ab"})})}};
  auto model = make_model(config, "model");
  std::vector<int64_t> ids;
  model->tokenize("aabé", ids);
  EXPECT_EQ(ids, (std::vector<int64_t>{3, 4, 5}));  // a+b -> ab (rank 0), a+ab -> aab (rank 1), é as bytes
}

TEST(Unigram, PicksBestScoringSegmentation) {
  json config = {
      {"type", "Unigram"},
      {"unk_id", 0},
      {"vocab", json::array({json::array({"<unk>", 0.0}), json::array({"a", -1.0}), json::array({"b", -1.0}),
                             json::array({"ab", -1.5}), json::array({"abc", -5.0}), json::array({"c", -2.0})})}};
  auto model = make_model(config, "model");
  std::vector<int64_t> ids;
  model->tokenize("abcxy", ids);  // ab + c (-3.5) beats abc (-5); "xy" fuses into one unk
  EXPECT_EQ(ids, (std::vector<int64_t>{3, 5, 0}));
}

TEST(Metaspace, SplitsBeforeEachSpace) {
  auto pre = make_pre_tokenizer(json{{"type", "Metaspace"}, {"replacement", "▁"}, {"prepend_scheme", "always"}},
                                "pre_tokenizer");
  EXPECT_EQ(texts(pre->pre_tokenize({"Hey   friend!", true})),
            (std::vector<std::string>{"▁Hey", "▁", "▁", "▁friend!"}));
  auto first = make_pre_tokenizer(json{{"type", "Metaspace"}, {"replacement", "▁"}, {"prepend_scheme", "first"}},
                                  "pre_tokenizer");
  EXPECT_EQ(texts(first->pre_tokenize({"how are", false})), (std::vector<std::string>{"how", "▁are"}));
}

TEST(BertPreTokenizer, IsolatesPunctuation) {
  auto pre = make_pre_tokenizer(json{{"type", "BertPreTokenizer"}}, "pre_tokenizer");
  EXPECT_EQ(texts(pre->pre_tokenize({"don't  stop$ now", true})),
            (std::vector<std::string>{"don", "'", "t", "stop", "$", "now"}));
}

TEST(SplitPreTokenizer, RegexWithLookahead) {
  // Llama-3 style pattern through ICU.
  auto pre = make_pre_tokenizer(
      json{
          {"type", "Split"},
          {"pattern",
           {{"Regex",
             R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)"}}},
          {"behavior", "Isolated"},
          {"invert", false}},
      "pre_tokenizer");
  EXPECT_EQ(texts(pre->pre_tokenize({"I'M 12345  ok", true})),
            (std::vector<std::string>{"I", "'M", " ", "123", "45", " ", " ok"}));
}

// Regression (issue 14): a catastrophically backtracking Split pattern hung (ICU regex, no
// limit); it is now an error naming the pattern, and long ordinary texts stay within the limit.
TEST(SplitPreTokenizer, BacktrackingPatternIsAnErrorNotAHang) {
  Regex nested("(a+)+$", "pre_tokenizer.pattern.Regex");
  modula::testing::within_seconds(5, [&] {
    try {
      nested.find_all(std::string(40, 'a') + "b");
      ADD_FAILURE() << "no exception";
    } catch (const TokenizerError& e) {
      EXPECT_NE(std::string(e.what()).find("'(a+)+$' (pre_tokenizer.pattern.Regex)"), std::string::npos) << e.what();
    }
  });
  Regex words(R"( ?\p{L}+| ?\p{N}+|\s+(?!\S)|\s+)", "test");
  std::string text;
  while (text.size() < 200000) text += "the quick brown fox 42 ";
  EXPECT_EQ(words.find_all(text).size(), text.size() / 23 * 5 + 1);  // the last space: \s+
}

TEST(WordPieceDecoder, CleansUpPerToken) {
  EXPECT_EQ(wordpiece_cleanup("hello , world ! it 's"), "hello, world! it's");
  auto decoder = make_decoder(json{{"type", "WordPiece"}, {"prefix", "##"}, {"cleanup", true}}, "decoder");
  std::string text;
  for (const auto& t : decoder->decode_chain({"un", "##aff", "##able", ".", "don", "'", "t"})) text += t;
  EXPECT_EQ(text, "unaffable. don ' t");
}

TEST(AddedTokens, StripFlagsAbsorbSpaces) {
  json list = json::array({{{"id", 7},
                            {"content", "<mask>"},
                            {"lstrip", true},
                            {"rstrip", true},
                            {"normalized", false},
                            {"special", true}}});
  AddedVocabulary added(list, "added_tokens", nullptr);
  std::vector<Segment> segs = added.extract_and_normalize("a  <mask>  b", nullptr);
  ASSERT_EQ(segs.size(), 3u);
  EXPECT_EQ(segs[0].piece.text, "a");
  EXPECT_EQ(segs[1].id, 7);
  EXPECT_EQ(segs[1].piece.text, "  <mask>  ");
  EXPECT_EQ(segs[2].piece.text, "b");
  EXPECT_FALSE(segs[2].piece.at_origin);
}

TEST(AddedTokens, SingleWordNeedsWordBoundaries) {
  json list = json::array({{{"id", 1}, {"content", "cat"}, {"single_word", true}, {"normalized", false}}});
  AddedVocabulary added(list, "added_tokens", nullptr);
  EXPECT_EQ(added.extract_and_normalize("concat", nullptr).size(), 1u);
  std::vector<Segment> segs = added.extract_and_normalize("a cat!", nullptr);
  ASSERT_EQ(segs.size(), 3u);
  EXPECT_EQ(segs[1].id, 1);
}

}  // namespace
}  // namespace modula::text
