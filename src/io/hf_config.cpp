#include "modula/io/hf_config.h"

#include <cmath>
#include <fstream>
#include <set>

#include "modula/io/config_field.h"
#include "modula/util/error.h"
#include "modula/util/fs.h"
#include "modula/util/json.h"

using nlohmann::json;

namespace modula::io {
namespace {

constexpr std::string_view kHfConfigTag = "config";

// First present, non-null key among `names`, read as T; `fallback` otherwise.
template <typename T>
T get_or(const json& j, std::initializer_list<const char*> names, T fallback, const std::string& source) {
  for (const char* n : names)
    if (j.contains(n) && !j[n].is_null())
      return config_field_with(j, n, fallback, [&](const char* k, const json&, const std::string& what) {
        throw_error<ConfigError>(kHfConfigTag, source + ": key '" + k + "' has the wrong type: " + what);
      });
  return fallback;
}

std::optional<int64_t> get_opt_int(const json& j, const char* name, const std::string& source) {
  auto it = j.find(name);
  if (it == j.end() || it->is_null()) return std::nullopt;
  if (!it->is_number_integer() || !config_value_fits<int64_t>(*it))
    throw_error<ConfigError>(kHfConfigTag, source + ": key '" + name + "' must be an integer (got " + it->dump() + ")");
  return it->get<int64_t>();
}

enum class Family { Decoder, Gpt2, Encoder };

Family family_of(const std::string& model_type, const std::string& source) {
  static const std::set<std::string> decoders = {"llama", "qwen2", "mistral"};
  static const std::set<std::string> encoders = {"bert", "roberta", "xlm-roberta"};
  if (decoders.count(model_type)) return Family::Decoder;
  if (model_type == "gpt2") return Family::Gpt2;
  if (encoders.count(model_type)) return Family::Encoder;
  throw_error<ConfigError>(kHfConfigTag, source + ": unknown model_type '" + model_type +
                                             "' (supported: llama, qwen2, mistral, gpt2, bert, roberta, xlm-roberta)");
}

// transformers 5: rope_parameters {rope_theta, rope_type, factor, ...};
// older checkpoints: rope_theta and rope_scaling {type|rope_type, factor, ...} at top level.
void parse_rope(const json& j, ModelConfig& c, const std::string& source) {
  c.rope_theta = get_or<double>(j, {"rope_theta"}, 10000.0, source);
  const json* scaling = nullptr;
  if (j.contains("rope_parameters") && j["rope_parameters"].is_object()) {
    scaling = &j["rope_parameters"];
    c.rope_theta = get_or<double>(*scaling, {"rope_theta"}, c.rope_theta, source);
  } else if (j.contains("rope_scaling") && j["rope_scaling"].is_object()) {
    scaling = &j["rope_scaling"];
  }
  if (!scaling) return;
  RopeScaling& r = c.rope_scaling;
  r.type = get_or<std::string>(*scaling, {"rope_type", "type"}, "default", source);
  r.factor = get_or<double>(*scaling, {"factor"}, 1.0, source);
  r.low_freq_factor = get_or<double>(*scaling, {"low_freq_factor"}, 1.0, source);
  r.high_freq_factor = get_or<double>(*scaling, {"high_freq_factor"}, 4.0, source);
  r.original_max_position_embeddings = get_or<int64_t>(*scaling, {"original_max_position_embeddings"}, 8192, source);
  if (r.type != "default" && r.type != "linear" && r.type != "llama3")
    throw_error<ConfigError>(kHfConfigTag,
                             source + ": unsupported rope type '" + r.type + "' (supported: default, linear, llama3)");
  if (!(r.factor > 0) || !std::isfinite(r.factor))
    throw_error<ConfigError>(kHfConfigTag, source + ": rope factor must be positive and finite");
}

void parse_decoder(const json& j, ModelConfig& c, const std::string& source) {
  c.intermediate_size = get_or<int64_t>(j, {"intermediate_size"}, 0, source);
  c.num_key_value_heads = get_or<int64_t>(j, {"num_key_value_heads"}, c.num_attention_heads, source);
  c.norm_eps = get_or<double>(j, {"rms_norm_eps"}, 1e-6, source);
  c.hidden_act = get_or<std::string>(j, {"hidden_act"}, "silu", source);
  c.max_position_embeddings = get_or<int64_t>(j, {"max_position_embeddings"}, 2048, source);
  bool attention_bias = get_or<bool>(j, {"attention_bias"}, false, source);
  if (c.model_type == "qwen2") {  // Qwen2: bias on q/k/v only
    c.qkv_bias = true;
    c.o_bias = false;
  } else {  // Llama: attention_bias covers q/k/v/o; Mistral has none
    c.qkv_bias = c.o_bias = attention_bias;
  }
  c.mlp_bias = get_or<bool>(j, {"mlp_bias"}, false, source);
  c.tie_word_embeddings = get_or<bool>(j, {"tie_word_embeddings"}, false, source);
  c.sliding_window = get_opt_int(j, "sliding_window", source);
  if (c.model_type == "qwen2" && !get_or<bool>(j, {"use_sliding_window"}, false, source)) c.sliding_window.reset();
  parse_rope(j, c, source);
  // inv_freq = theta^(-2i/d): theta <= 0, inf or NaN gives NaN/zero frequencies, i.e. garbage.
  if (!(c.rope_theta > 0) || !std::isfinite(c.rope_theta))
    throw_error<ConfigError>(
        kHfConfigTag, source + ": 'rope_theta' must be positive and finite (got " + json(c.rope_theta).dump() + ")");
  if (c.sliding_window && *c.sliding_window <= 0)
    throw_error<ConfigError>(
        kHfConfigTag, source + ": 'sliding_window' must be positive (got " + std::to_string(*c.sliding_window) + ")");
}

void parse_gpt2(const json& j, ModelConfig& c, const std::string& source) {
  c.hidden_size = get_or<int64_t>(j, {"n_embd", "hidden_size"}, 768, source);
  c.num_hidden_layers = get_or<int64_t>(j, {"n_layer", "num_hidden_layers"}, 12, source);
  c.num_attention_heads = get_or<int64_t>(j, {"n_head", "num_attention_heads"}, 12, source);
  c.num_key_value_heads = c.num_attention_heads;
  c.intermediate_size = get_or<int64_t>(j, {"n_inner"}, 4 * c.hidden_size, source);
  c.max_position_embeddings = get_or<int64_t>(j, {"n_positions", "max_position_embeddings"}, 1024, source);
  c.norm_eps = get_or<double>(j, {"layer_norm_epsilon"}, 1e-5, source);
  c.hidden_act = get_or<std::string>(j, {"activation_function"}, "gelu_new", source);
  c.tie_word_embeddings = get_or<bool>(j, {"tie_word_embeddings"}, true, source);
  c.qkv_bias = c.o_bias = c.mlp_bias = true;
  c.scale_attn_weights = get_or<bool>(j, {"scale_attn_weights"}, true, source);
  c.scale_attn_by_inverse_layer_idx = get_or<bool>(j, {"scale_attn_by_inverse_layer_idx"}, false, source);
}

void parse_encoder(const json& j, ModelConfig& c, const std::string& source) {
  c.intermediate_size = get_or<int64_t>(j, {"intermediate_size"}, 4 * c.hidden_size, source);
  c.num_key_value_heads = c.num_attention_heads;
  c.norm_eps = get_or<double>(j, {"layer_norm_eps"}, 1e-12, source);
  c.hidden_act = get_or<std::string>(j, {"hidden_act"}, "gelu", source);
  c.max_position_embeddings = get_or<int64_t>(j, {"max_position_embeddings"}, 512, source);
  c.type_vocab_size = get_or<int64_t>(j, {"type_vocab_size"}, 2, source);
  c.tie_word_embeddings = get_or<bool>(j, {"tie_word_embeddings"}, true, source);
  c.qkv_bias = c.o_bias = c.mlp_bias = true;
  std::string position_type = get_or<std::string>(j, {"position_embedding_type"}, "absolute", source);
  if (position_type != "absolute")
    throw_error<ConfigError>(
        kHfConfigTag, source + ": position_embedding_type '" + position_type + "' is not supported (absolute only)");
}

// A size above int32 cannot index a tensor dimension modula builds, and the allocator's own
// message for it names nothing.
constexpr int64_t kHfConfigMaxSize = (int64_t{1} << 31) - 1;
// ~2.7e11 parameters (1 TiB in float32): no config modula can build is larger.
constexpr int64_t kHfConfigMaxParams = int64_t{1} << 38;

void require_positive(int64_t v, const char* name, const std::string& source) {
  if (v <= 0)
    throw_error<ConfigError>(
        kHfConfigTag, source + ": " + std::string("'") + name + "' must be positive (got " + std::to_string(v) + ")");
  if (v > kHfConfigMaxSize)
    throw_error<ConfigError>(kHfConfigTag, source + ": '" + name + "' " + std::to_string(v) +
                                               " is out of range (at most " + std::to_string(kHfConfigMaxSize) + ")");
}

// Rough parameter count (embeddings + per-layer attention and MLP), refused above
// kHfConfigMaxParams before anything is allocated. Every factor is <= 2^31, so the
// products are computed in long double without overflow.
void require_buildable(const ModelConfig& c, const std::string& source) {
  using real = long double;
  const real h = static_cast<real>(c.hidden_size);
  const real attn =
      h * static_cast<real>(c.head_dim) * static_cast<real>(2 * c.num_attention_heads + 2 * c.num_key_value_heads);
  const real mlp = 3 * h * static_cast<real>(c.intermediate_size);
  const real params = 2 * static_cast<real>(c.vocab_size) * h + static_cast<real>(c.max_position_embeddings) * h +
                      static_cast<real>(c.num_hidden_layers) * (attn + mlp);
  if (params > static_cast<real>(kHfConfigMaxParams))
    throw_error<ConfigError>(
        kHfConfigTag, source + ": the config describes about " + std::to_string(static_cast<double>(params)) +
                          " parameters (vocab_size " + std::to_string(c.vocab_size) + ", hidden_size " +
                          std::to_string(c.hidden_size) + ", num_hidden_layers " + std::to_string(c.num_hidden_layers) +
                          ", intermediate_size " + std::to_string(c.intermediate_size) + "); at most " +
                          std::to_string(kHfConfigMaxParams) + " are supported");
}

}  // namespace

ModelConfig parse_hf_config(const json& j, const std::string& source) {
  if (!j.is_object()) throw_error<ConfigError>(kHfConfigTag, source + ": expected a JSON object");
  ModelConfig c;
  c.raw = j;
  if (!j.contains("model_type") || !j["model_type"].is_string())
    throw_error<ConfigError>(kHfConfigTag, source + ": missing string key 'model_type'");
  c.model_type = j["model_type"].get<std::string>();
  Family family = family_of(c.model_type, source);
  c.architectures = get_or<std::vector<std::string>>(j, {"architectures"}, {}, source);
  c.vocab_size = get_or<int64_t>(j, {"vocab_size"}, 0, source);
  c.hidden_size = get_or<int64_t>(j, {"hidden_size"}, 0, source);
  c.num_hidden_layers = get_or<int64_t>(j, {"num_hidden_layers"}, 0, source);
  c.num_attention_heads = get_or<int64_t>(j, {"num_attention_heads"}, 0, source);
  c.torch_dtype = get_or<std::string>(j, {"dtype", "torch_dtype"}, "float32", source);
  c.pad_token_id = get_opt_int(j, "pad_token_id", source);
  c.bos_token_id = get_opt_int(j, "bos_token_id", source);
  if (j.contains("eos_token_id") && j["eos_token_id"].is_array())
    c.eos_token_ids = get_or<std::vector<int64_t>>(j, {"eos_token_id"}, {}, source);
  else if (auto eos = get_opt_int(j, "eos_token_id", source))
    c.eos_token_ids = {*eos};
  for (int64_t eos : c.eos_token_ids)
    if (eos < 0)
      throw_error<ConfigError>(kHfConfigTag,
                               source + ": 'eos_token_id' must be >= 0 (got " + std::to_string(eos) + ")");
  if (c.bos_token_id && *c.bos_token_id < 0)
    throw_error<ConfigError>(kHfConfigTag,
                             source + ": 'bos_token_id' must be >= 0 (got " + std::to_string(*c.bos_token_id) + ")");
  if (j.contains("id2label") && j["id2label"].is_object()) c.num_labels = static_cast<int64_t>(j["id2label"].size());
  c.num_labels = get_or<int64_t>(j, {"num_labels"}, c.num_labels, source);

  switch (family) {
    case Family::Decoder:
      parse_decoder(j, c, source);
      break;
    case Family::Gpt2:
      parse_gpt2(j, c, source);
      break;
    case Family::Encoder:
      parse_encoder(j, c, source);
      break;
  }
  require_positive(c.vocab_size, "vocab_size", source);
  require_positive(c.hidden_size, "hidden_size", source);
  require_positive(c.intermediate_size, "intermediate_size", source);
  require_positive(c.num_hidden_layers, "num_hidden_layers", source);
  require_positive(c.num_attention_heads, "num_attention_heads", source);
  require_positive(c.num_key_value_heads, "num_key_value_heads", source);
  require_positive(c.max_position_embeddings, "max_position_embeddings", source);
  c.head_dim = get_or<int64_t>(j, {"head_dim"}, 0, source);
  if (c.head_dim == 0) {
    if (c.hidden_size % c.num_attention_heads != 0)
      throw_error<ConfigError>(kHfConfigTag, source + ": hidden_size " + std::to_string(c.hidden_size) +
                                                 " is not divisible by num_attention_heads " +
                                                 std::to_string(c.num_attention_heads));
    c.head_dim = c.hidden_size / c.num_attention_heads;
  }
  require_positive(c.head_dim, "head_dim", source);
  require_positive(c.num_labels, "num_labels", source);
  if (c.type_vocab_size < 0 || c.type_vocab_size > kHfConfigMaxSize)
    throw_error<ConfigError>(kHfConfigTag,
                             source + ": 'type_vocab_size' " + std::to_string(c.type_vocab_size) + " is out of range");
  require_buildable(c, source);
  if (c.num_attention_heads % c.num_key_value_heads != 0)
    throw_error<ConfigError>(kHfConfigTag, source + ": num_attention_heads " + std::to_string(c.num_attention_heads) +
                                               " is not a multiple of num_key_value_heads " +
                                               std::to_string(c.num_key_value_heads));
  if (family == Family::Decoder && c.head_dim % 2 != 0)
    throw_error<ConfigError>(kHfConfigTag, source + ": head_dim must be even for RoPE");
  if (!(c.norm_eps > 0) || !std::isfinite(c.norm_eps))
    throw_error<ConfigError>(kHfConfigTag, source + ": norm epsilon must be positive");
  return c;
}

ModelConfig load_hf_config(const std::string& path) {
  std::string p = fs::is_dir(path) ? fs::join(path, "config.json") : path;
  if (fs::is_dir(p)) throw_error<ConfigError>(kHfConfigTag, p + ": is a folder, not a config.json file");
  std::ifstream in(p);
  if (!in) throw_error<ConfigError>("config", "cannot open " + p);
  json j;
  try {
    j = parse_json(in);
  } catch (const JsonTextError& e) {
    throw_error<ConfigError>("config", p + ": invalid JSON: " + e.what());
  }
  return parse_hf_config(j, p);
}

json to_hf_json(const ModelConfig& c) {
  json j = c.raw.is_object() ? c.raw : json::object();
  j["model_type"] = c.model_type;
  if (!c.architectures.empty()) j["architectures"] = c.architectures;
  j["vocab_size"] = c.vocab_size;
  j["tie_word_embeddings"] = c.tie_word_embeddings;
  j["dtype"] = c.torch_dtype;
  if (c.model_type == "gpt2") {
    j["n_embd"] = c.hidden_size;
    j["n_layer"] = c.num_hidden_layers;
    j["n_head"] = c.num_attention_heads;
    j["n_inner"] = c.intermediate_size;
    j["n_positions"] = c.max_position_embeddings;
    j["layer_norm_epsilon"] = c.norm_eps;
    j["activation_function"] = c.hidden_act;
    return j;
  }
  j["hidden_size"] = c.hidden_size;
  j["intermediate_size"] = c.intermediate_size;
  j["num_hidden_layers"] = c.num_hidden_layers;
  j["num_attention_heads"] = c.num_attention_heads;
  j["max_position_embeddings"] = c.max_position_embeddings;
  j["hidden_act"] = c.hidden_act;
  if (c.type_vocab_size > 0) {
    j["type_vocab_size"] = c.type_vocab_size;
    j["layer_norm_eps"] = c.norm_eps;
  } else {
    j["num_key_value_heads"] = c.num_key_value_heads;
    j["head_dim"] = c.head_dim;
    j["rms_norm_eps"] = c.norm_eps;
    if (c.model_type == "llama") {
      j["attention_bias"] = c.qkv_bias;
      j["mlp_bias"] = c.mlp_bias;
    }
    json rope = {{"rope_theta", c.rope_theta}, {"rope_type", c.rope_scaling.type}};
    if (c.rope_scaling.type != "default") rope["factor"] = c.rope_scaling.factor;
    if (c.rope_scaling.type == "llama3") {
      rope["low_freq_factor"] = c.rope_scaling.low_freq_factor;
      rope["high_freq_factor"] = c.rope_scaling.high_freq_factor;
      rope["original_max_position_embeddings"] = c.rope_scaling.original_max_position_embeddings;
    }
    j["rope_parameters"] = rope;
    j["rope_theta"] = c.rope_theta;
    j.erase("rope_scaling");
  }
  if (c.pad_token_id) j["pad_token_id"] = *c.pad_token_id;
  return j;
}

}  // namespace modula::io
