#include "modula/composition/moe_lora.h"

#include "modula/modules/targets.h"

#include <stdexcept>

namespace modula {

void MoeLoraOptions::validate() const {
  auto fail = [](const std::string& what) { throw std::invalid_argument("[moe lora] " + what); };
  if (num_experts() <= 0) fail("num_experts must be positive, got " + std::to_string(num_experts()));
  if (r() <= 0) fail("r must be positive, got " + std::to_string(r()));
  if (k() < 1 || k() > num_experts())
    fail("k must be in [1, num_experts = " + std::to_string(num_experts()) + "], got " + std::to_string(k()));
}

TopKRouterOptions MoeLoraOptions::router(int64_t features) const {
  return TopKRouterOptions(features, num_experts())
      .k(k())
      .noisy(noisy())
      .normalize(normalize())
      .load_balance_coef(load_balance_coef())
      .z_loss_coef(z_loss_coef());
}

ModularLinear moe_lora(int64_t in, int64_t out, const MoeLoraOptions& options) {
  options.validate();
  auto bank = LoraBank(LoraBankOptions(in, out, options.num_experts()).r(options.r()).alpha(options.alpha()));
  return ModularLinear(bank, TopKRouter(options.router(in), options.context()).ptr());
}

std::vector<std::pair<std::string, ModularLinear>> add_moe_lora(Backbone& model, const nlohmann::json& targets,
                                                                const MoeLoraOptions& options) {
  options.validate();
  std::vector<std::pair<std::string, ModularLinear>> result;
  for (auto& [path, site] : select_sites(model, targets)) {
    auto layer = moe_lora(site->options.in_features(), site->options.out_features(), options);
    layer->to(site->weight.device(), site->weight.scalar_type());
    site->attach(options.name(), layer.ptr());
    result.emplace_back(path, layer);
  }
  return result;
}

}  // namespace modula
