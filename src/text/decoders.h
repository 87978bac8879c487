// tokenizer.json "decoder": turns token strings back into text (HF Decoder::decode_chain).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "text/errors.h"

namespace modula::text {

class Decoder {
 public:
  virtual ~Decoder() = default;
  // Transforms the token list; the final text is the concatenation of the result.
  virtual std::vector<std::string> decode_chain(std::vector<std::string> tokens) const = 0;
};

// nullptr for JSON null (tokens are then joined with single spaces).
std::unique_ptr<Decoder> make_decoder(const json& j, const std::string& where);

// HF decoders::wordpiece::cleanup: removes spaces before punctuation and contractions.
std::string wordpiece_cleanup(std::string text);

}  // namespace modula::text
