// Writes adapters that modula created (random, non-identity) with the logits modula
// computes for them, so that scripts/peft_check.py can load each folder in PEFT
// unchanged and compare. usage: peft_interop FIXTURES_ROOT OUT_DIR
#include <iostream>

#include "modula/backbone/registry.h"
#include "modula/composition/registry.h"
#include "modula/io/safetensors.h"
#include "modula/modules/adapter.h"
#include "modula/util/fs.h"

int main(int argc, char** argv) {
  if (argc != 3) {
    std::cerr << "usage: peft_interop FIXTURES_ROOT OUT_DIR\n";
    return 2;
  }
  using json = nlohmann::json;
  const std::string root = argv[1], out = argv[2];
  const std::vector<std::tuple<std::string, std::string, json>> cases = {
      {"llama-lora",
       "llama",
       {{"peft_type", "LORA"},
        {"task_type", "CAUSAL_LM"},
        {"r", 4},
        {"lora_alpha", 8},
        {"target_modules", {"q_proj", "v_proj", "down_proj"}}}},
      {"llama-dora",
       "llama",
       {{"peft_type", "LORA"},
        {"task_type", "CAUSAL_LM"},
        {"r", 4},
        {"lora_alpha", 8},
        {"use_dora", true},
        {"target_modules", {"q_proj", "k_proj"}}}},
      {"qwen2-rslora-pattern",
       "qwen2",
       {{"peft_type", "LORA"},
        {"task_type", "CAUSAL_LM"},
        {"r", 4},
        {"lora_alpha", 8},
        {"use_rslora", true},
        {"target_modules", {"q_proj", "up_proj"}},
        {"rank_pattern", {{"q_proj", 2}}},
        {"alpha_pattern", {{"up_proj", 3}}}}},
      {"gpt2-lora",
       "gpt2",
       {{"peft_type", "LORA"},
        {"task_type", "CAUSAL_LM"},
        {"r", 4},
        {"lora_alpha", 8},
        {"fan_in_fan_out", true},
        {"target_modules", {"c_attn", "c_fc"}}}},
      {"gpt2-ia3",
       "gpt2",
       {{"peft_type", "IA3"},
        {"task_type", "CAUSAL_LM"},
        {"fan_in_fan_out", true},
        {"target_modules", {"c_attn", "mlp.c_proj"}},
        {"feedforward_modules", {"mlp.c_proj"}}}},
      {"bert-lora",
       "bert",
       {{"peft_type", "LORA"}, {"r", 4}, {"lora_alpha", 8}, {"target_modules", {"query", "value"}}}},
      {"mistral-prompt",
       "mistral",
       {{"peft_type", "PROMPT_TUNING"},
        {"task_type", "CAUSAL_LM"},
        {"num_virtual_tokens", 4},
        {"token_dim", 64},
        {"num_transformer_submodules", 1},
        {"num_attention_heads", 4},
        {"num_layers", 2}}},
      {"llama-prefix",
       "llama",
       {{"peft_type", "PREFIX_TUNING"},
        {"task_type", "CAUSAL_LM"},
        {"num_virtual_tokens", 3},
        {"num_layers", 2},
        {"num_attention_heads", 2},
        {"token_dim", 32},
        {"num_transformer_submodules", 1}}},
  };
  torch::manual_seed(0);
  for (const auto& [name, arch, config] : cases) {
    auto model = modula::load_backbone(root + "/hf/models/" + arch);
    auto adapter = modula::add_adapter(*model, config);
    torch::NoGradGuard no_grad;
    for (auto& p : adapter.parameters()) p.add_(torch::randn_like(p) * 0.1);
    const std::string dir = modula::fs::join(out, name);
    modula::save_adapter(adapter, dir);
    modula::BackboneInput in;
    in.input_ids = torch::randint(3, model->config().vocab_size, {2, 9}, torch::kInt64);
    in.attention_mask = torch::ones({2, 9}, torch::kInt64);
    in.attention_mask[1].narrow(0, 6, 3).zero_();
    auto logits = modula::forward_adapted(*model, adapter, in).logits;
    modula::io::save_safetensors(
        modula::fs::join(dir, "modula_logits.safetensors"),
        {{"input_ids", in.input_ids}, {"attention_mask", in.attention_mask}, {"logits", logits}});
    std::cout << name << " -> " << dir << "\n";
  }
  return 0;
}
