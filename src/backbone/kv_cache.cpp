#include <algorithm>
#include <mutex>
#include <unordered_map>

#include "families.h"
#include "modula/util/error.h"

namespace modula {

namespace {

// Keys / values [B, H, S, D] live in a buffer [B, H, C, D] (C ≥ S slots per row and head), so
// a step writes its T new slots in place instead of concatenating the whole cache.
// True when t is such a view, starting at slot s0 of each row-head block, with T free
// slots after it, in a buffer grow() allocated. Any other tensor (a concatenation, an
// index_select, a prompt's expanded prefix, a view into someone's tensor) is copied into a
// fresh buffer once.
// The buffers grow() allocated (weak references: an entry keeps its address from being
// reused while it is listed); only these are written past a view's end.
std::mutex buffers_mu;
std::unordered_map<const c10::StorageImpl*, c10::weak_intrusive_ptr<c10::StorageImpl>> buffers;

void own(const torch::Tensor& buffer) {
  std::lock_guard<std::mutex> lk(buffers_mu);
  if (buffers.size() > 256)  // forget the buffers no cache holds any more
    for (auto it = buffers.begin(); it != buffers.end();) it = it->second.expired() ? buffers.erase(it) : std::next(it);
  buffers.emplace(buffer.storage().unsafeGetStorageImpl(), buffer.storage().getWeakStorageImpl());
}

bool owned(const torch::Tensor& t) {
  std::lock_guard<std::mutex> lk(buffers_mu);
  return buffers.count(t.storage().unsafeGetStorageImpl()) > 0;
}

bool has_room(const torch::Tensor& t, int64_t T) {
  if (t.dim() != 4 || !t.has_storage() || !owned(t)) return false;
  const int64_t B = t.size(0), H = t.size(1), S = t.size(2), D = t.size(3);
  if (t.stride(3) != 1 || t.stride(2) != D || D == 0) return false;
  const int64_t block = t.stride(1);
  if (block % D != 0 || t.stride(0) != H * block) return false;
  const int64_t C = block / D, offset = t.storage_offset();
  if (offset % D != 0 || offset >= block) return false;  // the view starts in the first row-head block
  const auto bytes = static_cast<int64_t>(t.storage().nbytes());
  if (bytes != B * H * block * static_cast<int64_t>(t.element_size())) return false;  // the whole buffer is this cache
  return offset / D + S + T <= C;
}

torch::Tensor grow(const torch::Tensor& cache, const torch::Tensor& x) {
  const int64_t S = cache.size(2), T = x.size(2);
  if (has_room(cache, T)) {
    auto grown =
        cache.as_strided({cache.size(0), cache.size(1), S + T, cache.size(3)}, cache.strides(), cache.storage_offset());
    grown.narrow(2, S, T).copy_(x);
    return grown;
  }
  const int64_t C = S + T + std::max<int64_t>(64, (S + T) / 4);  // amortised: a copy every ≥ 64 steps
  auto buffer = torch::empty({cache.size(0), cache.size(1), C, cache.size(3)}, cache.options());
  own(buffer);
  auto grown = buffer.narrow(2, 0, S + T);
  grown.narrow(2, 0, S).copy_(cache);
  grown.narrow(2, S, T).copy_(x);
  return grown;
}

}  // namespace

std::pair<torch::Tensor, torch::Tensor> KVCache::append(size_t layer, const torch::Tensor& k, const torch::Tensor& v) {
  if (keys.size() <= layer) {
    keys.resize(layer + 1);
    values.resize(layer + 1);
  }
  if (keys[layer].defined() && keys[layer].size(2) > 0) {
    keys[layer] = grow(keys[layer], k);
    values[layer] = grow(values[layer], v);
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
