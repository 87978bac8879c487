// Streaming detokenisation prints every character once, whole, in order.
#include <gtest/gtest.h>

#include "modula/text/stream_decoder.h"

namespace {

std::string fixture(const std::string& rel) { return std::string(MODULA_FIXTURES) + "/" + rel; }

TEST(StreamDecoder, MultiByteCharactersSplitAcrossTokensPrintWhole) {
  auto tok = modula::text::Tokenizer::from_file(fixture("hf/tokenizers/bytelevel-bpe.json"));
  for (std::string text : {"Grüße aus München", "日本語のテキスト", "emoji 🙂 test", "plain ascii"}) {
    auto ids = tok->encode(text);
    modula::text::StreamDecoder stream(*tok);
    std::string out;
    for (auto id : ids) {
      auto piece = stream.push(id);
      EXPECT_EQ(piece.find("\xEF\xBF\xBD"), std::string::npos) << text;
      out += piece;
    }
    out += stream.finish();
    EXPECT_EQ(out, text);
  }
}

}  // namespace
