// Per-row routing of input composition (survey §3.2 + fixed routing §4.1): a bank of M
// prompts (Lester et al. 2021) or M prefixes (Li & Liang 2021), one kind per bank, lengths
// free. Row i of a batch uses module ids[i] from a RoutingContext (-1: no module), and every
// row equals that row run alone through forward_with with its own module (or none).
//
// Shapes: B batch, T real tokens, M modules, n_m module m's length, P = max_m n_m (the bank's
// virtual slots), p_i = n_{ids[i]} (0 for -1), H hidden.
//
// Every row gets P virtual slots; the P - p_i slots a row does not fill are masked out in
// attention_mask, and position_ids give each real token the position it has alone
// (decoders: p_i + t; encoders: the default arange over the slots, see the layout).
// What the caller gets back (first step; later decoding steps are [B, T] as usual):
//   prefix, decoders:  outputs [B, T, ...]; the prefixes live in the KV cache as P slots.
//   prompt, decoders:  outputs [B, P + T, ...], slots [pad | virtual p_i | real T]:
//                      the last T positions are the real tokens, row-aligned.
//   prompt, encoders:  outputs [B, P + T, ...], slots [virtual p_i | real T | pad], so the
//                      first slot (sequence classification) is the one it is alone;
//                      seq-cls logits [B, L] need no change.
// real_tokens(model, out.logits) returns [B, T, ...] in every case.
// RoBERTa / XLM-R: rows go in as inputs_embeds, so a row without a module gets positions
// pad + 1 + t, where HF counts only tokens != pad_token_id: equal unless pad tokens come
// before real ones (left padding with the pad id); pad right or with another id.
//
// Decoding with a KV cache: call prepare (forward_with) on every step, with the same ids.
// Later steps keep the pad slots masked and set position_ids = past - P + p_i + t; a given
// attention_mask covers [B, past + T] like a single prompt's, its first P columns are
// replaced by the bank's. modula::generate prepares the first step only: use it with
// single modules, or step yourself.
//
//   auto ctx = std::make_shared<modula::RoutingContext>();
//   auto bank = modula::load_mixed_inputs(*model, {{"a", "adapters/p1"}, {"b", "adapters/p2"}}, ctx);
//   bank->set_rows({"b", modula::kBaseAdapter, "a"});           // = ctx->set("task", {1, -1, 0})
//   auto out = modula::forward_with(*model, {bank.ptr()}, in);
//   auto logits = bank->real_tokens(*model, out.logits);        // [3, T, V]
#pragma once

#include <string>
#include <vector>

#include "modula/composition/mixed.h"  // kBaseAdapter
#include "modula/modules/prompt.h"
#include "modula/routing/router.h"

namespace modula {

struct InputBankOptions {
  TORCH_ARG(std::string, key) = "task";             // RoutingContext entry with the per-row ids [B]
  TORCH_ARG(std::vector<std::string>, names) = {};  // module names for set_rows; empty = "0", "1", …

 public:  // TORCH_ARG leaves the section private
  // Throws std::invalid_argument naming the bad field.
  void validate(size_t num_modules) const;
};

class InputBankImpl : public InputModule {
 public:
  enum class Kind { Prompt, Prefix };

  // The modules are registered as children "0", "1", … (their parameters are the bank's).
  // Throws std::invalid_argument on an empty list, a module that is neither prompt nor
  // prefix tuning, mixed kinds, or shapes that differ (prompt token_dim; prefix layers,
  // kv heads, head_dim).
  InputBankImpl(std::vector<std::shared_ptr<InputModule>> modules, std::shared_ptr<RoutingContext> context,
                InputBankOptions options = {});

  void prepare(Backbone& model, BackboneInput& in, KVCache& scratch) override;
  int64_t num_virtual_tokens() const override { return max_length_; }  // P
  // Zero-padded stack [M, P, D] (module m in rows [0, n_m)); D = token_dim or L·2·Hkv·Dh.
  torch::Tensor prompt_embeddings() const override;

  // The real tokens' outputs [B, T, ...] of the first step's outputs (see the layout above).
  torch::Tensor real_tokens(const Backbone& model, const torch::Tensor& outputs) const;
  // Per-row ids for module names (kBaseAdapter -> -1); throws naming an unknown name.
  torch::Tensor row_ids(const std::vector<std::string>& name_per_row) const;
  void set_rows(const std::vector<std::string>& name_per_row) { context->set(options.key(), row_ids(name_per_row)); }

  Kind kind() const { return kind_; }
  int64_t num_modules() const { return static_cast<int64_t>(modules_.size()); }
  const std::shared_ptr<InputModule>& module(int64_t m) const { return modules_.at(static_cast<size_t>(m)); }
  std::vector<std::string> names() const;

  InputBankOptions options;
  std::shared_ptr<RoutingContext> context;

 private:
  torch::Tensor row_ids_checked(int64_t B) const;             // on the CPU
  torch::Tensor row_lengths(const torch::Tensor& ids) const;  // p [B] on the CPU
  torch::Tensor gather(const torch::Tensor& ids, bool right_aligned, torch::ScalarType dtype) const;
  void prepare_prompt(Backbone& model, BackboneInput& in, const torch::Tensor& ids, const torch::Tensor& p);
  void prepare_prefix(Backbone& model, BackboneInput& in, KVCache& scratch, const torch::Tensor& ids,
                      const torch::Tensor& p);
  void prepare_step(BackboneInput& in, const torch::Tensor& p, int64_t past, int64_t T) const;

  std::vector<std::shared_ptr<InputModule>> modules_;
  std::vector<int64_t> lengths_;
  int64_t max_length_ = 0, width_ = 0;  // P, D
  Kind kind_ = Kind::Prompt;
};
TORCH_MODULE(InputBank);

// Loads PEFT PROMPT_TUNING or PREFIX_TUNING folders (name, dir) into one bank; module m is
// named_dirs[m].first. Throws std::invalid_argument ("[input bank] …") naming the folder that
// is not an input module, mixes prompt with prefix, differs in shape, or a duplicate name.
InputBank load_mixed_inputs(Backbone& model, const std::vector<std::pair<std::string, std::string>>& named_dirs,
                            std::shared_ptr<RoutingContext> context = nullptr, const std::string& key = "task");

}  // namespace modula
