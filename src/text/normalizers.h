// tokenizer.json "normalizer" section.
#pragma once

#include <memory>
#include <string>

#include "text/errors.h"

namespace modula::text {

class Normalizer {
 public:
  virtual ~Normalizer() = default;
  virtual void normalize(std::string& text) const = 0;
};

// Builds a normalizer from its JSON object; nullptr for JSON null. where: key path for errors.
std::unique_ptr<Normalizer> make_normalizer(const json& j, const std::string& where);

}  // namespace modula::text
