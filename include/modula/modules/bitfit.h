// Bias-only fine-tuning, BitFit (Ben Zaken, Ravfogel, Goldberg 2022): every backbone
// weight is frozen except the bias terms (all of them, or those matching patterns).
// Parameter composition whose trainable set is the backbone's own biases, so the module
// shares those tensors: its parameter names are the HF names
// ("bert.encoder.layer.0.attention.self.query.bias", shapes as in the backbone).
//
//   auto bitfit = modula::BitFit(*model, modula::BitFitOptions());   // freezes the rest
//   torch::optim::AdamW opt(bitfit->parameters(), 1e-3);             // train, then
//   bitfit->save("out/bitfit");  modula::load_bitfit(*fresh, "out/bitfit");
#pragma once

#include <string>
#include <vector>

#include "modula/backbone/backbone.h"

namespace modula {

struct BitFitOptions {
  // Bias parameters to tune (patterns as matches_parameter in sparse_ft.h: equal, ".pattern"
  // suffix, or "re:<regex>"); empty = every bias (names ending in ".bias").
  TORCH_ARG(std::vector<std::string>, target_parameters);
  TORCH_ARG(std::vector<std::string>, exclude_parameters);
  TORCH_ARG(std::string, base_model_name_or_path);

 public:  // TORCH_ARG leaves the section private
  // Throws std::invalid_argument naming the bad field (empty or invalid pattern).
  void validate() const;
};

class BitFitImpl : public torch::nn::Module {
 public:
  // Selects the biases, sets requires_grad = false on every other backbone parameter
  // (attached modules' included) and true on the biases. Throws std::invalid_argument
  // when nothing is selected (e.g. Llama, which has no biases) or a target pattern
  // matches no bias.
  BitFitImpl(Backbone& model, BitFitOptions options = {});

  std::vector<std::string> names() const { return names_; }  // HF names, module order
  // Σ numel of the selected biases (what training updates).
  int64_t num_trainable() const;
  // adapter_config.json {"peft_type": "MODULA_BITFIT", "target_parameters": [...],
  // "exclude_parameters": [...], "base_model_name_or_path": ...} and
  // adapter_model.safetensors with one tensor per bias under its HF name.
  void save(const std::string& dir) const;

  BitFitOptions options;

 private:
  std::vector<std::string> names_;
};
TORCH_MODULE(BitFit);

// Reads a MODULA_BITFIT folder, selects biases by its config, copies the saved biases
// into `model` and returns the (enabled) BitFit. Throws std::runtime_error naming the
// file and key for a wrong peft_type, an unknown or missing bias, or a shape mismatch.
BitFit load_bitfit(Backbone& model, const std::string& dir);

}  // namespace modula
