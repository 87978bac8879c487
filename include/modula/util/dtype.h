// Floating dtypes by the names configs and flags use ("float32", "bfloat16", "float16").
#pragma once

#include <torch/torch.h>

#include <optional>
#include <string>

namespace modula {

// nullopt for any other name (callers throw naming their key and these three).
inline std::optional<torch::ScalarType> float_dtype(const std::string& name) {
  if (name == "float32") return torch::kFloat32;
  if (name == "bfloat16") return torch::kBFloat16;
  if (name == "float16") return torch::kHalf;
  return std::nullopt;
}

inline std::string dtype_name(torch::ScalarType t) {
  return t == torch::kBFloat16  ? "bfloat16"
         : t == torch::kHalf    ? "float16"
         : t == torch::kFloat32 ? "float32"
                                : c10::toString(t);
}

}  // namespace modula
