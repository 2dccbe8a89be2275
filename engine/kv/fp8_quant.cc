#include "engine/kv/fp8_quant.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "engine/common/dtype.h"
#include "engine/common/fp8.h"

namespace sals {
namespace {
constexpr uint16_t kF16MaxFinite = 0x7bff;
}  // namespace

uint16_t QuantizeFp8Row(const float* x, int64_t n, uint8_t* codes) {
  float amax = 0.0f;
  for (int64_t i = 0; i < n; ++i) {
    if (std::isfinite(x[i])) amax = std::max(amax, std::fabs(x[i]));
  }
  // The fp32 quotient amax / 448 rounded up (towards +inf) to fp16, as __float2half_ru on the
  // device; past the largest finite fp16 the scale stays there (and the largest values saturate).
  const float quotient = amax / kFp8E4M3Max;
  uint16_t scale_h = F32ToF16(quotient);
  if (scale_h < 0x7c00u && F16ToF32(scale_h) < quotient) ++scale_h;
  if (scale_h >= 0x7c00u) scale_h = kF16MaxFinite;
  const float scale = F16ToF32(scale_h);
  for (int64_t i = 0; i < n; ++i) {
    codes[i] = scale > 0.0f ? F32ToFp8E4M3(x[i] / scale) : (std::isnan(x[i]) ? kFp8E4M3Nan : 0);
  }
  return scale_h;
}

void DequantizeFp8Row(const uint8_t* codes, int64_t n, uint16_t scale, float* out) {
  const float s = F16ToF32(scale);
  for (int64_t i = 0; i < n; ++i) out[i] = Fp8E4M3ToF32(codes[i]) * s;
}

void RoundTripFp8Rows(float* x, int64_t n, int64_t row) {
  std::vector<uint8_t> codes(static_cast<size_t>(row));
  for (int64_t begin = 0; begin < n; begin += row) {
    const uint16_t scale = QuantizeFp8Row(x + begin, row, codes.data());
    DequantizeFp8Row(codes.data(), row, scale, x + begin);
  }
}

}  // namespace sals
