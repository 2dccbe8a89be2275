// Group quantization of cached values (SALS): each group of `group_size` consecutive values gets
// an fp16 scale and zero (asymmetric, min/max), codes of 2 or 4 bits packed little-end first.
// The CUDA kernels use the same format; this is its reference.
#pragma once

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"

namespace sals {

struct ValueQuantSpec {
  int bits = 4;         // 2 or 4; 16 = unquantized fp16 values (no scales)
  int group_size = 32;  // values per (scale, zero) pair; divides the row width
};

absl::Status ValidateValueQuantSpec(const ValueQuantSpec& spec, int row_width);

// Bytes of packed codes for n values.
inline size_t PackedCodeBytes(int64_t n, int bits) { return static_cast<size_t>(n * bits / 8); }

// Quantizes n values (n a multiple of group_size): codes (PackedCodeBytes), n/group_size fp16
// scales and zeros. Scale and zero are rounded to fp16 before the codes are chosen, so
// |x - dequantized| <= scale/2 holds for the stored scale (up to fp32 rounding).
void QuantizeValues(const float* x, int64_t n, const ValueQuantSpec& spec, uint8_t* codes,
                    uint16_t* scales, uint16_t* zeros);

// The inverse: out[i] = code[i] * scale[g] + zero[g].
void DequantizeValues(const uint8_t* codes, const uint16_t* scales, const uint16_t* zeros,
                      int64_t n, const ValueQuantSpec& spec, float* out);

}  // namespace sals
