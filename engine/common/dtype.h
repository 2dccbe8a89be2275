// Element types of weights and caches, and scalar conversions between them.
#pragma once

#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string_view>

namespace sals {

enum class DType { kF32, kF16, kBF16 };

inline size_t DTypeSize(DType t) { return t == DType::kF32 ? 4 : 2; }

inline std::string_view DTypeName(DType t) {
  switch (t) {
    case DType::kF32:
      return "F32";
    case DType::kF16:
      return "F16";
    case DType::kBF16:
      return "BF16";
  }
  return "?";
}

inline float Bf16ToF32(uint16_t h) { return std::bit_cast<float>(static_cast<uint32_t>(h) << 16); }

// Round to nearest even, NaN kept quiet.
inline uint16_t F32ToBf16(float f) {
  uint32_t u = std::bit_cast<uint32_t>(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

inline float F16ToF32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: renormalise
      int e = -1;
      do {
        ++e;
        mant <<= 1;
      } while ((mant & 0x400u) == 0);
      bits = sign | static_cast<uint32_t>(127 - 15 - e) << 23 | (mant & 0x3ffu) << 13;
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | mant << 13;
  } else {
    bits = sign | (exp + 127 - 15) << 23 | mant << 13;
  }
  return std::bit_cast<float>(bits);
}

// Round to nearest even, with overflow to inf and gradual underflow.
inline uint16_t F32ToF16(float f) {
  const uint32_t u = std::bit_cast<uint32_t>(f);
  const uint32_t sign = (u >> 16) & 0x8000u;
  const uint32_t abs = u & 0x7fffffffu;
  if (abs > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u);   // NaN
  if (abs >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // overflow -> inf
  if (abs < 0x38800000u) {                                               // subnormal or zero
    const float af = std::bit_cast<float>(abs);
    // 2^-24 is the f16 subnormal step; nearbyint rounds half to even.
    const float scaled = af * 16777216.0f;
    uint32_t m = static_cast<uint32_t>(scaled);
    const float frac = scaled - static_cast<float>(m);
    if (frac > 0.5f || (frac == 0.5f && (m & 1u))) ++m;
    return static_cast<uint16_t>(sign | m);
  }
  uint32_t r = abs + 0xfffu + ((abs >> 13) & 1u);
  return static_cast<uint16_t>(sign | ((r - 0x38000000u) >> 13));
}

// Converts n elements of type `src_type` at src into fp32.
inline void ConvertToF32(DType src_type, const void* src, float* dst, size_t n) {
  if (src_type == DType::kF32) {
    std::memcpy(dst, src, n * sizeof(float));
    return;
  }
  const auto* s = static_cast<const uint16_t*>(src);
  if (src_type == DType::kF16) {
    for (size_t i = 0; i < n; ++i) dst[i] = F16ToF32(s[i]);
  } else {
    for (size_t i = 0; i < n; ++i) dst[i] = Bf16ToF32(s[i]);
  }
}

// Converts n elements between any two dtypes (through fp32, so each value is rounded once).
// src and dst need no alignment: safetensors data inside a mapped file often has none.
inline void ConvertDType(DType src_type, const void* src, DType dst_type, void* dst, size_t n) {
  const auto* s = static_cast<const std::byte*>(src);
  auto* d = static_cast<std::byte*>(dst);
  if (src_type == dst_type) {
    std::memcpy(d, s, n * DTypeSize(src_type));
    return;
  }
  constexpr size_t kChunk = 1024;
  float f32[kChunk];
  uint16_t u16[kChunk];
  for (size_t i = 0; i < n; i += kChunk) {
    const size_t m = std::min(kChunk, n - i);
    if (src_type == DType::kF32) {
      std::memcpy(f32, s + i * 4, m * 4);
    } else {
      std::memcpy(u16, s + i * 2, m * 2);
      ConvertToF32(src_type, u16, f32, m);
    }
    if (dst_type == DType::kF32) {
      std::memcpy(d + i * 4, f32, m * 4);
      continue;
    }
    if (dst_type == DType::kF16) {
      for (size_t j = 0; j < m; ++j) u16[j] = F32ToF16(f32[j]);
    } else {
      for (size_t j = 0; j < m; ++j) u16[j] = F32ToBf16(f32[j]);
    }
    std::memcpy(d + i * 2, u16, m * 2);
  }
}

}  // namespace sals
