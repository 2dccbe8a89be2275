// The dtype names of the safetensors format (internal to engine/model).
#pragma once

#include <cstddef>
#include <optional>
#include <string_view>

#include "engine/common/dtype.h"

namespace sals {

// Bytes per element of a safetensors dtype name, or nullopt for names we do not know.
inline std::optional<size_t> SafetensorsItemSize(std::string_view name) {
  struct Entry {
    std::string_view name;
    size_t size;
  };
  static constexpr Entry kEntries[] = {
      {"F64", 8},  {"F32", 4},     {"F16", 2},     {"BF16", 2},    {"I64", 8}, {"I32", 4},
      {"I16", 2},  {"I8", 1},      {"U64", 8},     {"U32", 4},     {"U16", 2}, {"U8", 1},
      {"BOOL", 1}, {"F8_E4M3", 1}, {"F8_E5M2", 1}, {"F8_E8M0", 1},
  };
  for (const Entry& e : kEntries) {
    if (e.name == name) return e.size;
  }
  return std::nullopt;
}

// The DType we compute with for a safetensors dtype name (float types only).
inline std::optional<DType> SafetensorsFloatDType(std::string_view name) {
  if (name == "F32") return DType::kF32;
  if (name == "F16") return DType::kF16;
  if (name == "BF16") return DType::kBF16;
  return std::nullopt;
}

}  // namespace sals
