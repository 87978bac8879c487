// Parity with Hugging Face tokenizers: every probe in tests/fixtures/hf/tokenizers/expected.json
// (ids from encode(text), text from decode(ids)), plus load/decode error handling.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cctype>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <random>

#include "modula/text/tokenizer.h"
#include "modula/util/fs.h"

using modula::text::Tokenizer;
using modula::text::TokenizerError;
using nlohmann::json;

namespace {

namespace fs = modula::fs;

const std::string kDir = std::string(MODULA_FIXTURES) + "/hf/tokenizers";

json expected() {
  std::ifstream in(kDir + "/expected.json");
  return json::parse(in);
}

// expected.json names a tokenizer by file stem; sentencepiece is the .model file.
std::string tokenizer_path(const std::string& name) {
  if (fs::exists(kDir + "/" + name + ".json")) return kDir + "/" + name + ".json";
  return kDir + "/" + name + ".model";
}

// SentencePiece cannot load in an AddressSanitizer build (tokenizer.h): its cases are skipped there.
bool unavailable(const std::string& name) {
  return name == "sentencepiece" && !modula::text::sentencepiece_available();
}

std::vector<std::string> case_names() {
  std::vector<std::string> names;
  const json all = expected();
  for (auto it = all.at("cases").begin(); it != all.at("cases").end(); ++it) names.push_back(it.key());
  return names;
}

std::string error_of(const std::string& path) {
  try {
    Tokenizer::from_file(path);
  } catch (const TokenizerError& e) {
    return e.what();
  }
  return "";
}

// A file under a fresh temporary folder, removed with the object.
struct TempFile {
  std::string dir = fs::make_temp_dir("modula_text_"), path;
  TempFile(const std::string& name, const std::string& content) : path(fs::join(dir, name)) {
    std::ofstream(path, std::ios::binary) << content;
  }
  ~TempFile() { fs::remove_tree(dir); }
};

class Parity : public ::testing::TestWithParam<std::string> {};

TEST_P(Parity, EncodeAndDecodeMatchReference) {
  const std::string name = GetParam();
  if (unavailable(name)) GTEST_SKIP() << "SentencePiece in an AddressSanitizer build";
  auto tok = Tokenizer::from_file(tokenizer_path(name));
  const json probes = expected().at("cases").at(name);
  ASSERT_FALSE(probes.empty());
  for (const json& probe : probes) {
    const std::string text = probe.at("text");
    SCOPED_TRACE(name + " probe: \"" + text + "\"");
    const std::vector<int64_t> want = probe.at("ids").get<std::vector<int64_t>>();
    const std::vector<int64_t> ids = tok->encode(text);
    EXPECT_EQ(ids, want);
    EXPECT_EQ(tok->decode(want), probe.at("decoded").get<std::string>());
  }
}

INSTANTIATE_TEST_SUITE_P(HfTokenizers, Parity, ::testing::ValuesIn(case_names()), [](const auto& info) {
  std::string n = info.param;
  for (char& c : n)
    if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
  return n;
});

// Random bytes (often invalid UTF-8) must never crash; ids must stay in range and decode.
TEST(Tokenizer, RandomBytesNeverCrash) {
  std::mt19937 rng(1234);
  const std::string alphabet[] = {"a",
                                  "Z",
                                  " ",
                                  "  ",
                                  "\t",
                                  "\n",
                                  "'s",
                                  "##",
                                  "\xC3",
                                  "\xA9",
                                  "\xFF",
                                  "\xE2\x96\x81",
                                  "\xF0\x9F\x99\x82",
                                  "[CLS]",
                                  "<|endoftext|>",
                                  "<unk>",
                                  "9",
                                  ".",
                                  std::string(1, '\0'),
                                  "\xEF\xBF\xBD"};
  for (const std::string name : {"bytelevel-bpe", "wordpiece", "unigram", "sentencepiece"}) {
    if (unavailable(name)) continue;
    auto tok = Tokenizer::from_file(tokenizer_path(name));
    for (int trial = 0; trial < 200; ++trial) {
      std::string text;
      for (int k = rng() % 12; k > 0; --k) text += alphabet[rng() % std::size(alphabet)];
      std::vector<int64_t> ids = tok->encode(text);
      for (int64_t id : ids) ASSERT_TRUE(id >= 0 && id < tok->vocab_size()) << name << " id " << id;
      EXPECT_NO_THROW(tok->decode(ids, true));
      EXPECT_NO_THROW(tok->decode(ids, false));
    }
  }
}

TEST(Tokenizer, VocabLookups) {
  auto bert = Tokenizer::from_file(kDir + "/wordpiece.json");
  EXPECT_EQ(bert->token_to_id("[CLS]"), 2);
  EXPECT_EQ(bert->id_to_token(3), "[SEP]");
  EXPECT_EQ(bert->token_to_id("no-such-token-xyz"), std::nullopt);
  EXPECT_GT(bert->vocab_size(), 5);
  if (unavailable("sentencepiece")) return;
  auto spm = Tokenizer::from_file(kDir + "/sentencepiece.model");
  EXPECT_EQ(spm->token_to_id(spm->id_to_token(262)), 262);
  EXPECT_EQ(spm->token_to_id("no-such-piece-xyz"), std::nullopt);
}

TEST(Tokenizer, SpecialTokensKeptWhenAsked) {
  auto bert = Tokenizer::from_file(kDir + "/wordpiece.json");
  std::vector<int64_t> ids = bert->encode("hello");
  EXPECT_EQ(bert->decode(ids, /*skip_special_tokens=*/false).rfind("[CLS] ", 0), 0u);
  EXPECT_EQ(bert->encode("hello", /*add_special_tokens=*/false).size(), ids.size() - 2);
  auto gpt = Tokenizer::from_file(kDir + "/bytelevel-bpe.json");
  std::vector<int64_t> eot = gpt->encode("a<|endoftext|>a");
  EXPECT_EQ(eot, (std::vector<int64_t>{65, 0, 65}));
  EXPECT_EQ(gpt->decode(eot), "aa");
  EXPECT_EQ(gpt->decode(eot, false), "a<|endoftext|>a");
}

TEST(Tokenizer, LoadsFromFolder) {
  std::ifstream in(kDir + "/wordpiece.json");
  std::string content((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  TempFile file("tokenizer.json", content);
  auto tok = Tokenizer::from_file(file.dir);
  EXPECT_EQ(tok->encode("a"), (std::vector<int64_t>{2, 43, 3}));
}

TEST(TokenizerErrors, MissingFile) {
  std::string msg = error_of("/no/such/dir/tokenizer.json");
  EXPECT_EQ(msg.rfind("[tokenizer] ", 0), 0u) << msg;
  EXPECT_NE(msg.find("/no/such/dir/tokenizer.json"), std::string::npos) << msg;
}

TEST(TokenizerErrors, FolderWithoutTokenizer) {
  TempFile file("README", "nothing here");
  std::string msg = error_of(file.dir);
  EXPECT_NE(msg.find("tokenizer.json"), std::string::npos) << msg;
}

TEST(TokenizerErrors, MalformedJson) {
  TempFile file("tokenizer.json", "{\"model\": {\"type\": \"BPE\",");
  std::string msg = error_of(file.path);
  EXPECT_EQ(msg.rfind("[tokenizer] ", 0), 0u) << msg;
  EXPECT_NE(msg.find(file.path), std::string::npos) << msg;
  EXPECT_NE(msg.find("invalid JSON"), std::string::npos) << msg;
}

TEST(TokenizerErrors, UnknownModelType) {
  TempFile file("tokenizer.json", R"({"model": {"type": "Transformer9000", "vocab": {}}})");
  std::string msg = error_of(file.path);
  EXPECT_NE(msg.find(file.path), std::string::npos) << msg;
  EXPECT_NE(msg.find("model.type"), std::string::npos) << msg;
  EXPECT_NE(msg.find("Transformer9000"), std::string::npos) << msg;
}

TEST(TokenizerErrors, UnknownComponentTypesNameTheirKey) {
  const std::string model = R"("model": {"type": "WordLevel", "vocab": {"a": 0}, "unk_token": "a"})";
  TempFile n("n.json", "{" + model + R"(, "normalizer": {"type": "Sequence", "normalizers": [{"type": "Bogus"}]}})");
  EXPECT_NE(error_of(n.path).find("normalizer.normalizers[0].type"), std::string::npos);
  TempFile p("p.json", "{" + model + R"(, "pre_tokenizer": {"type": "Bogus"}})");
  EXPECT_NE(error_of(p.path).find("pre_tokenizer.type"), std::string::npos);
  TempFile d("d.json", "{" + model + R"(, "decoder": {"type": "Bogus"}})");
  EXPECT_NE(error_of(d.path).find("decoder.type"), std::string::npos);
  TempFile m("m.json", R"({"normalizer": null})");
  EXPECT_NE(error_of(m.path).find("model"), std::string::npos);
  TempFile t("t.json", R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["a b"]}})");
  EXPECT_NE(error_of(t.path).find("model.merges[0]"), std::string::npos);
}

TEST(TokenizerErrors, NotASentencePieceModel) {
  if (unavailable("sentencepiece")) GTEST_SKIP() << "SentencePiece in an AddressSanitizer build";
  TempFile file("tokenizer.model", "definitely not a protobuf");
  std::string msg = error_of(file.path);
  EXPECT_EQ(msg.rfind("[tokenizer] ", 0), 0u) << msg;
  EXPECT_NE(msg.find(file.path), std::string::npos) << msg;
}

TEST(TokenizerErrors, DecodeOutOfRangeId) {
  for (const std::string name : {"bytelevel-bpe", "wordpiece", "unigram", "sentencepiece"}) {
    if (unavailable(name)) continue;
    auto tok = Tokenizer::from_file(tokenizer_path(name));
    EXPECT_THROW(tok->decode({1, tok->vocab_size() + 1000}), TokenizerError) << name;
    EXPECT_THROW(tok->decode({-1}), TokenizerError) << name;
    EXPECT_THROW(tok->id_to_token(tok->vocab_size()), TokenizerError) << name;
  }
}

}  // namespace
