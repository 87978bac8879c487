// Factories of the backbone families; the registry maps model_type to one of them.
#pragma once

#include "modula/backbone/backbone.h"

namespace modula::detail {

std::shared_ptr<Backbone> make_decoder(const io::ModelConfig& c);  // llama, qwen2, mistral
std::shared_ptr<Backbone> make_gpt2(const io::ModelConfig& c);     // gpt2
std::shared_ptr<Backbone> make_encoder(const io::ModelConfig& c);  // bert, roberta, xlm-roberta

// Checks ids/embeds and mask shapes shared by all families; returns {B, T}.
// Also rejects token ids outside [0, vocab).
std::pair<int64_t, int64_t> check_input(const BackboneInput& in, const io::ModelConfig& c, int64_t past);

}  // namespace modula::detail
