#include "families.h"
#include "modula/util/error.h"

namespace modula {

std::pair<torch::Tensor, torch::Tensor> KVCache::append(size_t layer, const torch::Tensor& k, const torch::Tensor& v) {
  if (keys.size() <= layer) {
    keys.resize(layer + 1);
    values.resize(layer + 1);
  }
  if (keys[layer].defined()) {
    keys[layer] = torch::cat({keys[layer], k}, 2);
    values[layer] = torch::cat({values[layer], v}, 2);
  } else {
    keys[layer] = k;
    values[layer] = v;
  }
  return {keys[layer], values[layer]};
}

void KVCache::select_rows(const torch::Tensor& index) {
  for (size_t i = 0; i < keys.size(); ++i) {
    if (!keys[i].defined()) continue;
    keys[i] = keys[i].index_select(0, index);
    values[i] = values[i].index_select(0, index);
  }
}

namespace detail {

std::pair<int64_t, int64_t> check_input(const BackboneInput& in, const io::ModelConfig& c, int64_t past) {
  const int64_t hidden = c.hidden_size;
  int64_t B, T;
  if (in.inputs_embeds.defined()) {
    if (in.inputs_embeds.dim() != 3 || in.inputs_embeds.size(2) != hidden)
      throw_error("backbone", "inputs_embeds must be [B,T," + std::to_string(hidden) + "], got " +
                                  c10::str(in.inputs_embeds.sizes()));
    B = in.inputs_embeds.size(0);
    T = in.inputs_embeds.size(1);
  } else {
    if (!in.input_ids.defined() || in.input_ids.dim() != 2) throw_error("backbone", "input_ids must be [B,T]");
    if (in.input_ids.scalar_type() != torch::kInt64) throw_error("backbone", "input_ids must be int64");
    B = in.input_ids.size(0);
    T = in.input_ids.size(1);
    if (in.input_ids.numel() > 0) {
      int64_t lo = in.input_ids.min().item<int64_t>(), hi = in.input_ids.max().item<int64_t>();
      if (lo < 0 || hi >= c.vocab_size)
        throw_error("backbone", "token id " + std::to_string(lo < 0 ? lo : hi) + " outside the vocabulary [0, " +
                                    std::to_string(c.vocab_size) + ")");
    }
  }
  if (in.attention_mask.defined() &&
      (in.attention_mask.dim() != 2 || in.attention_mask.size(0) != B || in.attention_mask.size(1) != past + T))
    throw_error("backbone", "attention_mask must be [B, past+T] = [" + std::to_string(B) + "," +
                                std::to_string(past + T) + "], got " + c10::str(in.attention_mask.sizes()));
  if (in.position_ids.defined() && (in.position_ids.dim() != 2 || in.position_ids.size(1) != T))
    throw_error("backbone", "position_ids must be [B,T], got " + c10::str(in.position_ids.sizes()));
  return {B, T};
}

}  // namespace detail
}  // namespace modula
