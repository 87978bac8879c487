#include "modula/composition/input_bank.h"

#include <algorithm>
#include <set>
#include <stdexcept>

#include "modula/composition/registry.h"
#include "modula/util/error.h"

namespace modula {
namespace {

constexpr std::string_view kInputBankTag = "input bank";

std::string kind_name(InputBankImpl::Kind k) {
  return k == InputBankImpl::Kind::Prompt ? "a prompt (PROMPT_TUNING)" : "a prefix (PREFIX_TUNING)";
}

// D: prompt token_dim, or the prefix's L·2·Hkv·Dh.
int64_t width_of(const InputModule& m) {
  if (auto* prompt = dynamic_cast<const PromptTuningImpl*>(&m)) return prompt->embedding.size(1);
  const auto& o = dynamic_cast<const PrefixTuningImpl&>(m).options;
  return o.num_layers() * 2 * o.token_dim();
}

// The shape every module of a bank must share: prompt token_dim, or prefix layers x heads x head_dim.
std::string shape_of(const InputModule& m) {
  if (auto* prompt = dynamic_cast<const PromptTuningImpl*>(&m))
    return "token_dim " + std::to_string(prompt->embedding.size(1));
  const auto& o = dynamic_cast<const PrefixTuningImpl&>(m).options;
  return std::to_string(o.num_layers()) + " layers x " + std::to_string(o.num_heads()) + " kv heads x head_dim " +
         std::to_string(o.head_dim());
}

int64_t batch_size(const BackboneInput& in) {
  if (in.inputs_embeds.defined()) return in.inputs_embeds.size(0);
  if (!in.input_ids.defined() || in.input_ids.dim() != 2)
    throw_error(kInputBankTag, "input_ids must be [B,T] (or inputs_embeds [B,T,H])");
  return in.input_ids.size(0);
}

int64_t seq_len(const BackboneInput& in) {
  return in.inputs_embeds.defined() ? in.inputs_embeds.size(1) : in.input_ids.size(1);
}

torch::Device input_device(const BackboneInput& in) {
  return in.inputs_embeds.defined() ? in.inputs_embeds.device() : in.input_ids.device();
}

// Encoder layout [virtual p | real T | pad]: source slot in cat([virtual left-aligned P, real T]) of
// each output slot s: s (virtual), P + s - p (real), s - T (a zero pad slot in [p, P)).
torch::Tensor encoder_sources(const torch::Tensor& p, int64_t P, int64_t T) {
  auto s = torch::arange(P + T, p.options()).unsqueeze(0);
  auto pp = p.unsqueeze(1);
  return torch::where(s < pp, s, torch::where(s < pp + T, P + s - pp, s - T));
}

}  // namespace

void InputBankOptions::validate(size_t num_modules) const {
  if (key().empty()) throw_error(kInputBankTag, "key must not be empty");
  if (names().empty()) return;
  if (names().size() != num_modules)
    throw_error(kInputBankTag, "names has " + std::to_string(names().size()) + " entries for " +
                                   std::to_string(num_modules) + " modules");
  std::set<std::string> seen;
  for (const auto& n : names()) {
    if (n.empty()) throw_error(kInputBankTag, "a module name is empty");
    if (n == kBaseAdapter) throw_error(kInputBankTag, "module name '" + n + "' is reserved for rows without a module");
    if (!seen.insert(n).second) throw_error(kInputBankTag, "module name '" + n + "' appears twice");
  }
}

InputBankImpl::InputBankImpl(std::vector<std::shared_ptr<InputModule>> modules,
                             std::shared_ptr<RoutingContext> context_, InputBankOptions options_)
    : options(std::move(options_)), context(std::move(context_)), modules_(std::move(modules)) {
  if (modules_.empty()) throw_error(kInputBankTag, "no modules");
  if (!context) throw_error(kInputBankTag, "needs a RoutingContext (got null)");
  options.validate(modules_.size());
  const auto all = names();
  for (size_t m = 0; m < modules_.size(); ++m) {
    const auto& mod = modules_[m];
    Kind k;
    if (std::dynamic_pointer_cast<PromptTuningImpl>(mod))
      k = Kind::Prompt;
    else if (std::dynamic_pointer_cast<PrefixTuningImpl>(mod))
      k = Kind::Prefix;
    else
      throw_error(kInputBankTag, "module '" + all[m] + "' is neither prompt tuning nor prefix tuning");
    if (m == 0) kind_ = k;
    if (k != kind_)
      throw_error(kInputBankTag, "module '" + all[m] + "' is " + kind_name(k) + " but module '" + all[0] + "' is " +
                                     kind_name(kind_) + ": a bank holds one kind");
    if (shape_of(*mod) != shape_of(*modules_[0]))
      throw_error(kInputBankTag, "module '" + all[m] + "' has " + shape_of(*mod) + " but module '" + all[0] + "' has " +
                                     shape_of(*modules_[0]));
    lengths_.push_back(mod->num_virtual_tokens());
    max_length_ = std::max(max_length_, lengths_.back());
    width_ = width_of(*mod);
    register_module(std::to_string(m), mod);
  }
}

std::vector<std::string> InputBankImpl::names() const {
  if (!options.names().empty()) return options.names();
  std::vector<std::string> out;
  for (size_t m = 0; m < modules_.size(); ++m) out.push_back(std::to_string(m));
  return out;
}

torch::Tensor InputBankImpl::row_ids(const std::vector<std::string>& name_per_row) const {
  const auto all = names();
  std::vector<int64_t> ids;
  for (const auto& n : name_per_row) {
    if (n == kBaseAdapter) {
      ids.push_back(-1);
      continue;
    }
    auto it = std::find(all.begin(), all.end(), n);
    if (it == all.end()) {
      std::string known = kBaseAdapter;
      for (const auto& a : all) known += ", " + a;
      throw_error(kInputBankTag, "unknown module name '" + n + "' (known: " + known + ")");
    }
    ids.push_back(it - all.begin());
  }
  return torch::tensor(ids, torch::kInt64);
}

// The ids under options.key, on the CPU, checked against the batch and the bank.
torch::Tensor InputBankImpl::row_ids_checked(int64_t B) const {
  auto ids = context->get(options.key());
  if (ids.dim() != 1 || ids.scalar_type() != torch::kInt64)
    throw_error(kInputBankTag, "routing key '" + options.key() + "' must hold int64 ids [B], got " +
                                   c10::str(ids.scalar_type()) + " " + c10::str(ids.sizes()));
  if (ids.size(0) != B)
    throw_error(kInputBankTag, "routing key '" + options.key() + "' has " + std::to_string(ids.size(0)) +
                                   " ids but the batch has " + std::to_string(B) + " rows");
  ids = ids.cpu().contiguous();
  const auto* v = ids.data_ptr<int64_t>();
  for (int64_t i = 0; i < B; ++i)
    if (v[i] < -1 || v[i] >= num_modules())
      throw_error(kInputBankTag, "row " + std::to_string(i) + " has module id " + std::to_string(v[i]) +
                                     "; ids must be in [-1, " + std::to_string(num_modules()) + ")");
  return ids;
}

torch::Tensor InputBankImpl::row_lengths(const torch::Tensor& ids) const {
  auto lengths = torch::tensor(lengths_, torch::kInt64).index_select(0, ids.clamp_min(0));
  return torch::where(ids < 0, torch::zeros_like(lengths), lengths);
}

// Row i's virtual tokens [B, P, D] in one index_select over the stacked, zero-padded modules that
// this batch uses (unused modules stay out of the graph: no gradient reaches them).
torch::Tensor InputBankImpl::gather(const torch::Tensor& ids, bool right_aligned, torch::ScalarType dtype) const {
  const int64_t B = ids.size(0), P = max_length_;
  const auto* v = ids.data_ptr<int64_t>();
  std::vector<int64_t> compact(static_cast<size_t>(num_modules()), -1), rows(static_cast<size_t>(B));
  std::vector<torch::Tensor> stacked;
  for (int64_t i = 0; i < B; ++i) {
    if (v[i] < 0) continue;
    auto& slot = compact[static_cast<size_t>(v[i])];
    if (slot < 0) {
      auto values = modules_[static_cast<size_t>(v[i])]->prompt_embeddings().to(dtype);  // [n_m, D]
      const int64_t pad = P - values.size(0);
      stacked.push_back(torch::constant_pad_nd(values, {0, 0, right_aligned ? pad : 0, right_aligned ? 0 : pad}));
      slot = static_cast<int64_t>(stacked.size()) - 1;
    }
  }
  auto device = modules_[0]->parameters().front().device();
  stacked.push_back(torch::zeros({P, width_}, torch::dtype(dtype).device(device)));  // rows without a module
  const auto none = static_cast<int64_t>(stacked.size()) - 1;
  for (int64_t i = 0; i < B; ++i) rows[static_cast<size_t>(i)] = v[i] < 0 ? none : compact[static_cast<size_t>(v[i])];
  auto index = torch::tensor(rows, torch::kInt64).to(device);
  return torch::stack(stacked).index_select(0, index);
}

void InputBankImpl::prepare(Backbone& model, BackboneInput& in, KVCache& scratch) {
  const int64_t past = in.cache ? in.cache->length() : 0;
  const int64_t B = batch_size(in), T = seq_len(in);
  auto ids = row_ids_checked(B);
  auto p = row_lengths(ids).to(input_device(in));
  if (kind_ == Kind::Prefix) std::dynamic_pointer_cast<PrefixTuningImpl>(modules_[0])->check_model(model);
  if (past > 0) {
    if (!model.causal()) throw_error(kInputBankTag, "a KV cache needs a decoder");
    prepare_step(in, p, past, T);
  } else if (kind_ == Kind::Prompt) {
    prepare_prompt(model, in, ids, p);
  } else {
    prepare_prefix(model, in, scratch, ids, p);
  }
}

void InputBankImpl::prepare_prompt(Backbone& model, BackboneInput& in, const torch::Tensor& ids,
                                   const torch::Tensor& p) {
  if (in.position_ids.defined())
    throw_error(kInputBankTag, "explicit position_ids are not supported with prompts (as for prompt tuning alone)");
  auto embeds = in.inputs_embeds.defined() ? in.inputs_embeds : model.embed_tokens(in.input_ids);
  const int64_t B = embeds.size(0), T = embeds.size(1), H = embeds.size(2), P = max_length_;
  const bool causal = model.causal();
  auto x = torch::cat({gather(ids, causal, embeds.scalar_type()).to(embeds.device()), embeds}, 1);  // [B, P+T, H]
  auto s = torch::arange(P, p.options()).unsqueeze(0);
  auto filled = causal ? s >= P - p.unsqueeze(1) : s < p.unsqueeze(1);  // [B, P]: slots holding a virtual token
  auto mask = in.attention_mask.defined() ? in.attention_mask : torch::ones({B, T}, p.options());
  mask = torch::cat({filled.to(mask.scalar_type()), mask.to(p.device())}, 1);
  auto types = in.token_type_ids;
  if (types.defined()) types = torch::cat({torch::zeros({B, P}, types.options()), types}, 1);
  if (causal) {  // [pad | virtual | real]: alone, virtual j sits at position j and real token t at p + t
    in.position_ids = (torch::arange(P + T, p.options()).unsqueeze(0) - (P - p).unsqueeze(1)).clamp_min(0);
  } else {  // [virtual | real | pad]: the default positions over the slots are those of the row alone
    auto src = encoder_sources(p, P, T);
    x = x.gather(1, src.unsqueeze(-1).expand({B, P + T, H}));
    mask = mask.gather(1, src);
    if (types.defined()) types = types.gather(1, src);
  }
  in.inputs_embeds = x;
  in.input_ids = torch::Tensor();
  in.attention_mask = mask;
  in.token_type_ids = types;
}

void InputBankImpl::prepare_prefix(Backbone& model, BackboneInput& in, KVCache& scratch, const torch::Tensor& ids,
                                   const torch::Tensor& p) {
  if (!in.cache) in.cache = &scratch;
  const int64_t B = ids.size(0), T = seq_len(in), P = max_length_;
  const auto& o = std::dynamic_pointer_cast<PrefixTuningImpl>(modules_[0])->options;
  auto kv = prefix_key_values(gather(ids, /*right_aligned=*/true, model.parameters().front().scalar_type()), o);
  for (int64_t l = 0; l < o.num_layers(); ++l) in.cache->append(static_cast<size_t>(l), kv[2 * l], kv[2 * l + 1]);
  auto filled = torch::arange(P, p.options()).unsqueeze(0) >= (P - p).unsqueeze(1);
  auto mask = in.attention_mask.defined() ? in.attention_mask : torch::ones({B, T}, p.options());
  in.attention_mask = torch::cat({filled.to(mask.scalar_type()), mask.to(p.device())}, 1);
  // Alone, the real tokens follow n = p cached positions.
  if (!in.position_ids.defined()) in.position_ids = p.unsqueeze(1) + torch::arange(T, p.options()).unsqueeze(0);
}

void InputBankImpl::prepare_step(BackboneInput& in, const torch::Tensor& p, int64_t past, int64_t T) const {
  const int64_t P = max_length_, B = p.size(0);
  if (past < P)
    throw_error(kInputBankTag, "the KV cache holds " + std::to_string(past) + " positions, fewer than the bank's " +
                                   std::to_string(P) + " virtual slots: prepare the first step with this bank");
  auto filled = torch::arange(P, p.options()).unsqueeze(0) >= (P - p).unsqueeze(1);
  auto mask = in.attention_mask;
  if (mask.defined() && (mask.dim() != 2 || mask.size(1) != past + T))
    throw_error(kInputBankTag, "attention_mask must be [B, past+T] = [" + std::to_string(B) + "," +
                                   std::to_string(past + T) + "], got " + c10::str(mask.sizes()));
  mask = mask.defined() ? mask.narrow(1, P, past + T - P).to(p.device()) : torch::ones({B, past + T - P}, p.options());
  in.attention_mask = torch::cat({filled.to(mask.scalar_type()), mask}, 1);
  if (!in.position_ids.defined())
    in.position_ids = (past - P) + p.unsqueeze(1) + torch::arange(T, p.options()).unsqueeze(0);
}

torch::Tensor InputBankImpl::prompt_embeddings() const {
  std::vector<torch::Tensor> padded;
  for (const auto& m : modules_) {
    auto v = m->prompt_embeddings();
    padded.push_back(torch::constant_pad_nd(v, {0, 0, 0, max_length_ - v.size(0)}));
  }
  return torch::stack(padded);
}

torch::Tensor InputBankImpl::real_tokens(const Backbone& model, const torch::Tensor& outputs) const {
  if (kind_ == Kind::Prefix) return outputs;
  const int64_t B = outputs.size(0), T = outputs.dim() < 2 ? -1 : outputs.size(1) - max_length_;
  if (T < 0)
    throw_error(kInputBankTag, "outputs " + c10::str(outputs.sizes()) + " are shorter than the bank's " +
                                   std::to_string(max_length_) + " virtual slots");
  if (model.causal()) return outputs.narrow(1, max_length_, T);
  auto ids = row_ids_checked(B);
  auto slots = (row_lengths(ids).unsqueeze(1) + torch::arange(T, torch::kInt64).unsqueeze(0)).to(outputs.device());
  auto rows = torch::arange(B, torch::dtype(torch::kInt64).device(outputs.device())).unsqueeze(1);
  return outputs.index({rows, slots});
}

InputBank load_mixed_inputs(Backbone& model, const std::vector<std::pair<std::string, std::string>>& named_dirs,
                            std::shared_ptr<RoutingContext> context, const std::string& key) {
  if (named_dirs.empty()) throw_error(kInputBankTag, "no folders to load");
  std::vector<std::string> names;
  std::vector<std::shared_ptr<InputModule>> modules;
  std::string first_type;
  for (const auto& [name, dir] : named_dirs) {
    auto a = load_adapter(model, dir, name);
    if (!a.input) {
      remove_adapter(a);
      throw_error(kInputBankTag,
                  "'" + name + "' (" + dir + ") is a " + a.peft_type + " adapter, not PROMPT_TUNING or PREFIX_TUNING");
    }
    if (first_type.empty()) first_type = a.peft_type;
    if (a.peft_type != first_type)
      throw_error(kInputBankTag, "'" + name + "' (" + dir + ") is " + a.peft_type + " but '" + names[0] + "' (" +
                                     named_dirs[0].second + ") is " + first_type +
                                     ": a bank holds prompts or prefixes, not both");
    names.push_back(name);
    modules.push_back(a.input);
  }
  if (!context) context = std::make_shared<RoutingContext>();
  return InputBank(modules, std::move(context), InputBankOptions().key(key).names(names));
}

}  // namespace modula
