// FP8 e4m3 (the OCP "E4M3FN" encoding that CUDA's __nv_fp8_e4m3 uses): 1 sign bit, 4 exponent
// bits (bias 7), 3 mantissa bits, no infinities, NaN = S.1111.111, largest finite 448.
// This header is the one definition of the conversion for the CPU reference and the CUDA
// kernels alike (SALS_FP8_HD marks the functions host and device under nvcc):
//   - round to nearest, ties to even, with gradual underflow (subnormal step 2^-9);
//   - saturating: every finite |x| >= 448 (and +-inf) becomes +-448 (CUDA's __NV_SATFINITE);
//   - NaN becomes 0x7f (positive quiet NaN); 0x7f and 0xff decode to NaN.
#pragma once

#include <bit>
#include <cstdint>

#if defined(__CUDACC__)
#define SALS_FP8_HD __host__ __device__ inline
#else
#define SALS_FP8_HD inline
#endif

namespace sals {

constexpr float kFp8E4M3Max = 448.0f;
constexpr uint8_t kFp8E4M3Nan = 0x7f;

SALS_FP8_HD uint32_t Fp8FloatBits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  return std::bit_cast<uint32_t>(f);
#endif
}

SALS_FP8_HD float Fp8BitsFloat(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  return std::bit_cast<float>(u);
#endif
}

SALS_FP8_HD uint8_t F32ToFp8E4M3(float f) {
  const uint32_t u = Fp8FloatBits(f);
  const auto sign = static_cast<uint8_t>((u >> 24) & 0x80u);
  const uint32_t abs = u & 0x7fffffffu;
  if (abs > 0x7f800000u) return kFp8E4M3Nan;
  if (abs >= 0x43e00000u) return static_cast<uint8_t>(sign | 0x7eu);  // >= 448 or inf: saturate
  if (abs < 0x3c800000u) {  // below 2^-6, the smallest normal: multiples of 2^-9
    const float scaled = Fp8BitsFloat(abs) * 512.0f;  // exact (a power of two)
    uint32_t m = static_cast<uint32_t>(scaled);
    const float frac = scaled - static_cast<float>(m);
    if (frac > 0.5f || (frac == 0.5f && (m & 1u))) ++m;  // m == 8 is 2^-6, encoded as such
    return static_cast<uint8_t>(sign | m);
  }
  // Normal: keep 3 of the 23 mantissa bits, ties to even; a carry moves into the exponent, and
  // nothing below 448 rounds past 448 (0x7e).
  const uint32_t r = abs + 0x7ffffu + ((abs >> 20) & 1u);
  return static_cast<uint8_t>(sign | ((r >> 20) - (120u << 3)));
}

SALS_FP8_HD float Fp8E4M3ToF32(uint8_t b) {
  const uint32_t sign = static_cast<uint32_t>(b & 0x80u) << 24;
  const uint32_t exp = (b >> 3) & 0xfu;
  const uint32_t mant = b & 0x7u;
  if (exp == 0xfu && mant == 0x7u) return Fp8BitsFloat(0x7fc00000u);
  if (exp == 0) {
    const float v = static_cast<float>(mant) * (1.0f / 512.0f);
    return sign ? -v : v;
  }
  return Fp8BitsFloat(sign | (exp + 120u) << 23 | mant << 20);
}

}  // namespace sals
