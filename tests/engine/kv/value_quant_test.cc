// Group quantization of values: round-trip error within each bit width's bound, packing layout,
// and spec validation.
#include "engine/kv/value_quant.h"

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "engine/common/dtype.h"
#include "gtest/gtest.h"

namespace sals {
namespace {

// One fp16 ulp at |x|: the rounding the stored zero can add on top of scale/2.
float F16Ulp(float x) {
  const uint16_t h = F32ToF16(std::abs(x));
  return F16ToF32(static_cast<uint16_t>(h + 1)) - F16ToF32(h);
}

class ValueQuantTest : public ::testing::TestWithParam<std::tuple<int, int>> {};

TEST_P(ValueQuantTest, RoundTripWithinHalfStep) {
  const auto [bits, group] = GetParam();
  const ValueQuantSpec spec{bits, group};
  const int64_t n = group * 37;
  std::mt19937 rng(bits * 100 + group);
  std::normal_distribution<float> dist(0.3f, 2.0f);
  std::vector<float> x(n);
  for (float& v : x) v = dist(rng);
  x[5] = 40.0f;  // an outlier widens its group's step, not the others'
  std::vector<uint8_t> codes(PackedCodeBytes(n, bits));
  std::vector<uint16_t> scales(n / group), zeros(n / group);
  QuantizeValues(x.data(), n, spec, codes.data(), scales.data(), zeros.data());
  std::vector<float> y(n);
  DequantizeValues(codes.data(), scales.data(), zeros.data(), n, spec, y.data());
  double worst_ratio = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    const float scale = F16ToF32(scales[i / group]);
    const float zero = F16ToF32(zeros[i / group]);
    const float bound = scale / 2 + F16Ulp(zero) + 1e-6f * std::abs(x[i]);
    EXPECT_LE(std::abs(x[i] - y[i]), bound) << "index " << i;
    worst_ratio = std::max<double>(worst_ratio, std::abs(x[i] - y[i]) / (scale / 2));
  }
  // The step really is (max - min) / (2^bits - 1): errors use most of the half step.
  EXPECT_GT(worst_ratio, 0.5);
}

INSTANTIATE_TEST_SUITE_P(BitsAndGroups, ValueQuantTest,
                         ::testing::Combine(::testing::Values(2, 4),
                                            ::testing::Values(16, 32, 64)));

TEST(ValueQuantTest, ConstantGroupIsExactAndCodesPackLowBitsFirst) {
  const ValueQuantSpec spec{4, 16};
  std::vector<float> x(32, 1.5f);
  for (int i = 16; i < 32; ++i) x[i] = static_cast<float>(i - 16);  // 0..15: one code each
  std::vector<uint8_t> codes(PackedCodeBytes(32, 4));
  std::vector<uint16_t> scales(2), zeros(2);
  QuantizeValues(x.data(), 32, spec, codes.data(), scales.data(), zeros.data());
  std::vector<float> y(32);
  DequantizeValues(codes.data(), scales.data(), zeros.data(), 32, spec, y.data());
  for (int i = 0; i < 32; ++i) EXPECT_EQ(y[i], x[i]) << i;
  EXPECT_EQ(codes[8], 0x10);  // values 0 and 1: code 0 in the low nibble, 1 in the high one
  EXPECT_EQ(codes[15], 0xfe);
}

TEST(ValueQuantTest, ValidatesSpec) {
  EXPECT_TRUE(ValidateValueQuantSpec({4, 32}, 128).ok());
  EXPECT_FALSE(ValidateValueQuantSpec({3, 32}, 128).ok());
  EXPECT_FALSE(ValidateValueQuantSpec({4, 48}, 128).ok());
  EXPECT_FALSE(ValidateValueQuantSpec({2, 0}, 128).ok());
  EXPECT_FALSE(ValidateValueQuantSpec({4, 1}, 128).ok());  // half a byte per group
}

}  // namespace
}  // namespace sals
