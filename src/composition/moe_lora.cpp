#include "modula/composition/moe_lora.h"

#include <stdexcept>

#include "modula/modules/targets.h"
#include "modula/util/error.h"

namespace modula {

void MoeLoraOptions::validate() const {
  static constexpr std::string_view kTag = "moe lora";
  if (num_experts() <= 0) throw_error(kTag, "num_experts must be positive, got " + std::to_string(num_experts()));
  if (r() <= 0) throw_error(kTag, "r must be positive, got " + std::to_string(r()));
  if (k() < 1 || k() > num_experts())
    throw_error(kTag,
                "k must be in [1, num_experts = " + std::to_string(num_experts()) + "], got " + std::to_string(k()));
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

Adapter add_moe_lora(Backbone& model, const nlohmann::json& targets, const MoeLoraOptions& options) {
  options.validate();
  Adapter a;
  a.name = options.name();
  a.peft_type = "MODULA_MOE_LORA";
  a.config = targets;
  a.context = options.context();
  for (auto& [path, site] : select_sites(model, targets)) {
    auto layer = moe_lora(site->options.in_features(), site->options.out_features(), options);
    layer->to(site->weight.device(), site->weight.scalar_type());
    std::map<std::string, std::string> keys;  // saved under their own names
    for (const auto& p : layer->named_parameters()) keys[p.key()] = p.key();
    a.modules.push_back({path, site, layer.ptr(), keys, site});
  }
  attach_modules(a);
  return a;
}

std::shared_ptr<ModularLinearImpl> moe_layer(const AttachedModule& m) {
  auto layer = std::dynamic_pointer_cast<ModularLinearImpl>(m.module);
  if (!layer) throw_error("moe lora", "the module at " + m.site + " is not a MoE-LoRA layer");
  return layer;
}

}  // namespace modula
