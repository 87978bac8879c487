// Floating dtypes by the names configs and flags use ("float32", "bfloat16", "float16").
#pragma once

#include <torch/torch.h>

#include <string>
#include <string_view>

#include "modula/util/error.h"

namespace modula {

// The dtype `name` names; for any other name std::invalid_argument
// "[tag] key: 'name' is not float32, bfloat16 or float16".
inline torch::ScalarType float_dtype(const std::string& name, std::string_view tag, const std::string& key) {
  if (name == "float32") return torch::kFloat32;
  if (name == "bfloat16") return torch::kBFloat16;
  if (name == "float16") return torch::kHalf;
  throw_error(tag, key + ": '" + name + "' is not float32, bfloat16 or float16");
}

// A storage dtype of module weights: float_dtype's, or "int8" (quantized; LoraBankImpl::store_as).
inline torch::ScalarType storage_dtype(const std::string& name, std::string_view tag, const std::string& key) {
  if (name == "int8") return torch::kChar;
  if (name == "float32" || name == "bfloat16" || name == "float16") return float_dtype(name, tag, key);
  throw_error(tag, key + ": '" + name + "' is not float32, bfloat16, float16 or int8");
}

inline std::string dtype_name(torch::ScalarType t) {
  return t == torch::kBFloat16  ? "bfloat16"
         : t == torch::kHalf    ? "float16"
         : t == torch::kFloat32 ? "float32"
         : t == torch::kChar    ? "int8"
                                : c10::toString(t);
}

}  // namespace modula
