// Architectures are data: model_type -> family factory. Adding an architecture is a
// row here (and, for a new family, one file).
#include "modula/backbone/registry.h"

#include <functional>
#include <map>

#include "families.h"
#include "modula/util/strings.h"

namespace modula {
namespace {

using Factory = std::function<std::shared_ptr<Backbone>(const io::ModelConfig&)>;

const std::map<std::string, Factory>& architectures() {
  static const std::map<std::string, Factory> table = {
      {"llama", detail::make_decoder},       {"qwen2", detail::make_decoder}, {"mistral", detail::make_decoder},
      {"gpt2", detail::make_gpt2},           {"bert", detail::make_encoder},  {"roberta", detail::make_encoder},
      {"xlm-roberta", detail::make_encoder},
  };
  return table;
}

}  // namespace

std::vector<std::string> supported_model_types() {
  std::vector<std::string> names;
  for (const auto& kv : architectures()) names.push_back(kv.first);
  return names;
}

std::shared_ptr<Backbone> create_backbone(const io::ModelConfig& config) {
  auto it = architectures().find(config.model_type);
  if (it == architectures().end()) {
    std::string known;
    for (const auto& n : supported_model_types()) known += (known.empty() ? "" : ", ") + n;
    throw_error<ConfigError>("config", "unknown model_type '" + config.model_type + "' (supported: " + known + ")");
  }
  return it->second(config);
}

Head head_from_architecture(const io::ModelConfig& c) {
  const std::string a = c.architecture();
  if (ends_with(a, "ForCausalLM") || ends_with(a, "LMHeadModel")) return Head::CausalLM;
  if (ends_with(a, "ForMaskedLM")) return Head::MaskedLM;
  if (ends_with(a, "ForSequenceClassification")) return Head::SequenceClassification;
  if (ends_with(a, "Model")) return Head::None;
  if (a.empty()) {  // no architectures field: the usual head of the family
    bool encoder = c.type_vocab_size > 0;
    return encoder ? Head::MaskedLM : Head::CausalLM;
  }
  throw_error<ConfigError>(
      "config", "unsupported architecture '" + a +
                    "' (supported: *ForCausalLM, *LMHeadModel, *ForMaskedLM, *ForSequenceClassification, *Model)");
}

std::string to_string(Head h) {
  switch (h) {
    case Head::None:
      return "none";
    case Head::CausalLM:
      return "causal-lm";
    case Head::MaskedLM:
      return "masked-lm";
    case Head::SequenceClassification:
      return "sequence-classification";
  }
  return "?";
}

}  // namespace modula
