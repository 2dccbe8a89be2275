// FP8 e4m3 storage of cached rows (kv_cache.dtype=fp8_e4m3): a row of n values is stored as n
// e4m3 codes (engine/common/fp8.h) and one fp16 scale: scale = the fp32 quotient max|x| / 448
// rounded up to fp16 (largest finite fp16 at most), code_i = e4m3(x_i / scale) in fp32
// arithmetic, so no finite value of the row goes past 448 by more than fp32 rounding.
// Rows: a SALS layer's latent key of a token (one scale per token), a dense layer's K or V of one
// KV head of a token (one scale per token and KV head). docs/SALS.md says why.
// The CUDA kernels follow the same definition (scale: __float2half_ru(amax / 448.0f)); this is
// its reference.
#pragma once

#include <cstdint>

namespace sals {

// Quantizes x[0, n): writes n codes and returns the fp16 bits of the scale. NaN values become
// the NaN code and are left out of the maximum, as are infinities (which saturate). An all-zero
// row gets scale 0 and zero codes.
uint16_t QuantizeFp8Row(const float* x, int64_t n, uint8_t* codes);

// out[i] = e4m3(codes[i]) * scale.
void DequantizeFp8Row(const uint8_t* codes, int64_t n, uint16_t scale, float* out);

// In place: x becomes what storing it as fp8 rows of `row` values and reading it back gives
// (n a multiple of row). The CPU reference keeps these values in its fp32 store.
void RoundTripFp8Rows(float* x, int64_t n, int64_t row);

}  // namespace sals
