#include <ATen/CPUGeneratorImpl.h>

#include "modula/backbone/registry.h"

namespace modula {

void init_weights(Backbone& model, double std, uint64_t seed) {
  torch::NoGradGuard no_grad;
  torch::Generator gen = at::detail::createCPUGenerator(seed);
  for (auto& p : model.named_parameters()) {
    const std::string& name = p.key();
    auto& t = p.value();
    bool is_norm = name.find("norm") != std::string::npos || name.find("LayerNorm") != std::string::npos ||
                   name.find("ln_") != std::string::npos;
    bool is_bias = name.size() >= 4 && name.compare(name.size() - 4, 4, "bias") == 0;
    if (is_bias)
      t.zero_();
    else if (is_norm)
      t.fill_(1.0);
    else
      t.copy_(at::normal(0.0, std, t.sizes(), gen).to(t.dtype()));
  }
}

}  // namespace modula
