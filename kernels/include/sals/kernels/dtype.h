// Element types the kernels take for activations and logits. Kernels see no engine types, so this
// mirrors (and a backend maps from) the engine's own DType.
#pragma once

#include <cstddef>

namespace sals::kernels {

enum class DType { kF32, kF16, kBF16 };

inline size_t DTypeBytes(DType t) { return t == DType::kF32 ? 4 : 2; }

inline const char* DTypeName(DType t) {
  switch (t) {
    case DType::kF32:
      return "f32";
    case DType::kF16:
      return "f16";
    case DType::kBF16:
      return "bf16";
  }
  return "?";
}

}  // namespace sals::kernels
