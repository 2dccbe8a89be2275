#include "engine/kv/value_quant.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "engine/common/dtype.h"

namespace sals {

absl::Status ValidateValueQuantSpec(const ValueQuantSpec& spec, int row_width) {
  if (spec.bits == 16) return absl::OkStatus();
  if (spec.bits != 2 && spec.bits != 4) {
    return absl::InvalidArgumentError(
        absl::StrCat("value_bits must be 2, 4 or 16, got ", spec.bits));
  }
  if (spec.group_size <= 0 || row_width % spec.group_size != 0 ||
      (spec.group_size * spec.bits) % 8 != 0) {
    return absl::InvalidArgumentError(absl::StrCat("value_group_size must divide the value width ",
                                                   row_width, " and fill whole bytes, got ",
                                                   spec.group_size));
  }
  return absl::OkStatus();
}

void QuantizeValues(const float* x, int64_t n, const ValueQuantSpec& spec, uint8_t* codes,
                    uint16_t* scales, uint16_t* zeros) {
  const int levels = (1 << spec.bits) - 1;
  const int per_byte = 8 / spec.bits;
  std::fill(codes, codes + PackedCodeBytes(n, spec.bits), 0);
  for (int64_t g = 0; g * spec.group_size < n; ++g) {
    const float* xg = x + g * spec.group_size;
    const auto [lo, hi] = std::minmax_element(xg, xg + spec.group_size);
    // zero is the largest fp16 <= min, so no value of the group falls below the range.
    uint16_t zero_h = F32ToF16(*lo);
    if (F16ToF32(zero_h) > *lo)
      zero_h = (zero_h & 0x8000u) ? zero_h + 1 : (zero_h == 0 ? 0x8001u : zero_h - 1);
    const float zero = F16ToF32(zero_h);
    // The scale must cover the top of the range measured from the rounded zero.
    uint16_t scale_h = F32ToF16((*hi - zero) / levels);
    if (F16ToF32(scale_h) * levels + zero < *hi) ++scale_h;  // next fp16 up
    const float scale = F16ToF32(scale_h);
    scales[g] = scale_h;
    zeros[g] = zero_h;
    const float inv = scale > 0.0f ? 1.0f / scale : 0.0f;
    for (int i = 0; i < spec.group_size; ++i) {
      const int64_t idx = g * spec.group_size + i;
      const int q = std::clamp(static_cast<int>(std::nearbyint((xg[i] - zero) * inv)), 0, levels);
      codes[idx / per_byte] |= static_cast<uint8_t>(q << ((idx % per_byte) * spec.bits));
    }
  }
}

void DequantizeValues(const uint8_t* codes, const uint16_t* scales, const uint16_t* zeros,
                      int64_t n, const ValueQuantSpec& spec, float* out) {
  const int per_byte = 8 / spec.bits;
  const int mask = (1 << spec.bits) - 1;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t g = i / spec.group_size;
    const int q = (codes[i / per_byte] >> ((i % per_byte) * spec.bits)) & mask;
    out[i] = static_cast<float>(q) * F16ToF32(scales[g]) + F16ToF32(zeros[g]);
  }
}

}  // namespace sals
