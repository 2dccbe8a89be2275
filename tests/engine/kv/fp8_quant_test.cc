// FP8 rows with an fp16 scale: the scale covers the row's largest value without saturating, the
// round trip errs by at most half an e4m3 step of each value, and zero/NaN/inf rows behave as
// kv/fp8_quant.h says.
#include "engine/kv/fp8_quant.h"

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "engine/common/dtype.h"
#include "engine/common/fp8.h"
#include "gtest/gtest.h"

namespace sals {
namespace {

TEST(Fp8QuantTest, ScaleIsMaxOver448RoundedUpToFp16) {
  const std::vector<float> x = {1.0f, -3.0f, 0.5f, 2.0f};
  std::vector<uint8_t> codes(x.size());
  const uint16_t scale = QuantizeFp8Row(x.data(), 4, codes.data());
  const float s = F16ToF32(scale);
  EXPECT_GE(s * 448.0f, 3.0f);
  EXPECT_LT(F16ToF32(static_cast<uint16_t>(scale - 1)) * 448.0f, 3.0f);  // the smallest such
  // The largest value maps to (nearly) 448 and none saturates.
  EXPECT_LE(Fp8E4M3ToF32(codes[1]), -416.0f);
  EXPECT_EQ(codes[1] & 0x80, 0x80);
}

TEST(Fp8QuantTest, RoundTripErrorIsHalfAStepOfEachValue) {
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (float magnitude : {1e-3f, 1.0f, 40.0f}) {
    std::vector<float> x(128);
    for (float& v : x) v = normal(rng) * magnitude;
    x[5] = 0.0f;
    std::vector<uint8_t> codes(x.size());
    std::vector<float> y(x.size());
    const uint16_t scale = QuantizeFp8Row(x.data(), 128, codes.data());
    DequantizeFp8Row(codes.data(), 128, scale, y.data());
    const float s = F16ToF32(scale);
    for (size_t i = 0; i < x.size(); ++i) {
      // e4m3 keeps 3 mantissa bits: relative error <= 2^-4 for normals, absolute <= 2^-10 x
      // scale in the subnormal range (plus fp32 rounding of x / scale and code x scale).
      const float bound = std::max(std::fabs(x[i]) * 0.0625f, s * 0.0009765625f) * 1.0001f;
      EXPECT_LE(std::fabs(y[i] - x[i]), bound) << magnitude << " " << i;
    }
    EXPECT_EQ(y[5], 0.0f);
  }
}

TEST(Fp8QuantTest, RoundTripRowsUsesOneScalePerRow) {
  // Two rows of very different size: each keeps its relative precision under its own scale.
  std::vector<float> x = {1000.0f, 3.0f, 1e-3f, 2e-3f};
  RoundTripFp8Rows(x.data(), 4, 2);
  EXPECT_NEAR(x[0], 1000.0f, 1000.0f / 16);
  EXPECT_NEAR(x[2], 1e-3f, 1e-3f / 16);
  EXPECT_NEAR(x[3], 2e-3f, 2e-3f / 16);
  // Under one shared scale 1e-3 would be below the smallest step (1000/448 x 2^-9).
  std::vector<float> shared = {1000.0f, 3.0f, 1e-3f, 2e-3f};
  RoundTripFp8Rows(shared.data(), 4, 4);
  EXPECT_EQ(shared[2], 0.0f);
}

TEST(Fp8QuantTest, ZeroNanAndInfinity) {
  const float inf = std::numeric_limits<float>::infinity();
  std::vector<uint8_t> codes(3);
  const std::vector<float> zeros = {0.0f, 0.0f, 0.0f};
  EXPECT_EQ(QuantizeFp8Row(zeros.data(), 3, codes.data()), 0);
  EXPECT_EQ(codes, std::vector<uint8_t>(3, 0));
  const std::vector<float> odd = {std::numeric_limits<float>::quiet_NaN(), inf, 2.0f};
  const uint16_t scale = QuantizeFp8Row(odd.data(), 3, codes.data());
  EXPECT_EQ(codes[0], kFp8E4M3Nan);
  EXPECT_EQ(codes[1], 0x7e);                  // saturates at 448 x scale
  EXPECT_GE(F16ToF32(scale) * 448.0f, 2.0f);  // the scale comes from the finite values
}

}  // namespace
}  // namespace sals
