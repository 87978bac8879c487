// tokenizer.json "pre_tokenizer" section: cuts normalized text into words for the model.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "text/split.h"

namespace modula::text {

class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  // Splits one piece (never an added token) into words; empty words are dropped.
  virtual std::vector<Piece> pre_tokenize(const Piece& piece) const = 0;
};

// Builds a pre-tokenizer from its JSON object; nullptr for JSON null.
std::unique_ptr<PreTokenizer> make_pre_tokenizer(const json& j, const std::string& where);

}  // namespace modula::text
