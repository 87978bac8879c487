// optim.activation_checkpointing through `modula train`'s code path trains the same steps as
// without it: every step's loss and the final eval loss, for modules inside the layers (LoRA
// with dropout on every linear, a routed hypernetwork), a prompt ahead of them (the layers'
// input needs a gradient) and a prefix from an MLP upstream of them; on llama, mistral and qwen2 (gpt2 and bert:
// test_checkpointing.cpp). A router whose aux loss would lose its gradient is refused by name.
#include <algorithm>

#include "composition/registry_matrix.h"

using namespace modula;
using namespace modula::train;
using namespace modula::testing::matrix;
using modula::testing::TempDir;
using json = nlohmann::json;

namespace {

std::vector<double> step_losses(const json& cfg) {
  std::vector<double> losses;
  Callbacks cb;
  cb.on_step = [&](const StepInfo& s) { losses.push_back(s.loss); };
  auto r = train::train(parse_train_config(cfg), qa_data(), cb);
  losses.push_back(r.eval.at("qa").at("loss"));
  return losses;
}

}  // namespace

TEST(RegistryMatrix, ActivationCheckpointingTrainsTheSameSteps) {
  const std::vector<std::pair<std::string, json>> cases = {
      {"llama", {{"peft_type", "LORA"}, {"r", 4}, {"lora_dropout", 0.2}, {"target_modules", kAllLinear}}},
      {"mistral", {{"peft_type", "LORA"}, {"r", 4}, {"lora_dropout", 0.2}, {"target_modules", {"q_proj", "up_proj"}}}},
      {"llama", {{"peft_type", "PROMPT_TUNING"}, {"num_virtual_tokens", 3}}},
      {"qwen2",
       {{"peft_type", "PREFIX_TUNING"},
        {"num_virtual_tokens", 3},
        {"prefix_projection", true},
        {"encoder_hidden_size", 16}}},
      {"llama",
       {{"peft_type", "MODULA_HYPER_LORA"},
        {"num_tasks", 2},
        {"r", 2},
        {"hidden", 8},
        {"target_modules", {"v_proj"}}}}};
  for (const auto& [model, config] : cases) {
    TempDir d;
    json modules = {{{"name", "m"}, {"config", config}}};
    auto plain = run_config(d, model, "plain", modules, 3e-2, 5);
    auto checkpointed = run_config(d, model, "checkpointed", modules, 3e-2, 5);
    checkpointed["optim"]["activation_checkpointing"] = true;
    auto a = step_losses(plain), b = step_losses(checkpointed);
    ASSERT_EQ(a.size(), b.size()) << config.dump();
    for (size_t i = 0; i < a.size(); ++i)
      EXPECT_NEAR(a[i], b[i], 1e-5 * std::max(1.0, a[i])) << model << " " << config.dump() << " loss " << i;
  }
  auto msg = modula::testing::error_of([&] {
    TempDir d;
    json moe = {{"peft_type", "MODULA_MOE_LORA"}, {"num_experts", 4},
                {"num_experts_per_tok", 2},       {"r", 2},
                {"router_aux_loss_coef", 0.01},   {"target_modules", {"q_proj"}}};
    auto cfg = run_config(d, "llama", "moe", {{{"name", "m"}, {"config", moe}}}, 3e-2, 2);
    cfg["optim"]["activation_checkpointing"] = true;
    train::train(parse_train_config(cfg), qa_data(), {});
  });
  EXPECT_NE(msg.find("aux loss carries no gradient"), std::string::npos) << msg;
}
