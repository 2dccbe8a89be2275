// The e4m3 conversion against known bit patterns: exact values, ties to even in the normal and
// subnormal ranges, saturation at 448, NaN, and every one of the 256 codes back and forth.
#include "engine/common/fp8.h"

#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>

#include "gtest/gtest.h"

namespace sals {
namespace {

TEST(Fp8E4M3Test, KnownBitPatterns) {
  EXPECT_EQ(F32ToFp8E4M3(0.0f), 0x00);
  EXPECT_EQ(F32ToFp8E4M3(-0.0f), 0x80);
  EXPECT_EQ(F32ToFp8E4M3(1.0f), 0x38);   // exponent 7 (bias 7), mantissa 0
  EXPECT_EQ(F32ToFp8E4M3(-2.0f), 0xc0);  // sign, exponent 8
  EXPECT_EQ(F32ToFp8E4M3(1.875f), 0x3f);
  EXPECT_EQ(F32ToFp8E4M3(448.0f), 0x7e);               // largest finite
  EXPECT_EQ(F32ToFp8E4M3(0.015625f), 0x08);            // 2^-6, smallest normal
  EXPECT_EQ(F32ToFp8E4M3(0.001953125f), 0x01);         // 2^-9, smallest subnormal
  EXPECT_EQ(F32ToFp8E4M3(7.0f * 0.001953125f), 0x07);  // largest subnormal
}

TEST(Fp8E4M3Test, RoundsToNearestTiesToEven) {
  // Between 1 (0x38) and 1.125 (0x39): 1.0625 is the tie, to the even 1; just above goes up.
  EXPECT_EQ(F32ToFp8E4M3(1.0625f), 0x38);
  EXPECT_EQ(F32ToFp8E4M3(std::nextafter(1.0625f, 2.0f)), 0x39);
  EXPECT_EQ(F32ToFp8E4M3(std::nextafter(1.0625f, 0.0f)), 0x38);
  // Between 1.125 (0x39) and 1.25 (0x3a): the tie 1.1875 goes to the even 0x3a.
  EXPECT_EQ(F32ToFp8E4M3(1.1875f), 0x3a);
  // Mantissa carry into the exponent: 1.9375 (tie between 1.875 and 2) goes to 2 (0x40).
  EXPECT_EQ(F32ToFp8E4M3(1.9375f), 0x40);
  // Subnormal ties: 1.5 x 2^-9 -> 2 x 2^-9; 2.5 x 2^-9 -> 2 x 2^-9; 0.5 x 2^-9 -> 0.
  EXPECT_EQ(F32ToFp8E4M3(1.5f / 512.0f), 0x02);
  EXPECT_EQ(F32ToFp8E4M3(2.5f / 512.0f), 0x02);
  EXPECT_EQ(F32ToFp8E4M3(0.5f / 512.0f), 0x00);
  EXPECT_EQ(F32ToFp8E4M3(std::nextafter(0.5f / 512.0f, 1.0f)), 0x01);
  // The top subnormal rounds up into the smallest normal: 7.5 x 2^-9 is a tie to 8 x 2^-9.
  EXPECT_EQ(F32ToFp8E4M3(7.5f / 512.0f), 0x08);
  EXPECT_EQ(F32ToFp8E4M3(-7.5f / 512.0f), 0x88);
}

TEST(Fp8E4M3Test, SaturatesAndKeepsNan) {
  EXPECT_EQ(F32ToFp8E4M3(447.0f), 0x7e);  // rounds to 448
  EXPECT_EQ(F32ToFp8E4M3(464.0f), 0x7e);
  EXPECT_EQ(F32ToFp8E4M3(1e30f), 0x7e);
  EXPECT_EQ(F32ToFp8E4M3(-1e30f), 0xfe);
  EXPECT_EQ(F32ToFp8E4M3(std::numeric_limits<float>::infinity()), 0x7e);
  EXPECT_EQ(F32ToFp8E4M3(-std::numeric_limits<float>::infinity()), 0xfe);
  EXPECT_EQ(F32ToFp8E4M3(std::numeric_limits<float>::quiet_NaN()), kFp8E4M3Nan);
  EXPECT_EQ(F32ToFp8E4M3(-std::numeric_limits<float>::quiet_NaN()), kFp8E4M3Nan);
  EXPECT_TRUE(std::isnan(Fp8E4M3ToF32(0x7f)));
  EXPECT_TRUE(std::isnan(Fp8E4M3ToF32(0xff)));
  // Below half the smallest subnormal: zero with the sign kept.
  EXPECT_EQ(F32ToFp8E4M3(1e-10f), 0x00);
  EXPECT_EQ(F32ToFp8E4M3(-1e-10f), 0x80);
}

TEST(Fp8E4M3Test, DecodesKnownCodes) {
  EXPECT_EQ(Fp8E4M3ToF32(0x38), 1.0f);
  EXPECT_EQ(Fp8E4M3ToF32(0x7e), 448.0f);
  EXPECT_EQ(Fp8E4M3ToF32(0xfe), -448.0f);
  EXPECT_EQ(Fp8E4M3ToF32(0x01), 1.0f / 512.0f);
  EXPECT_EQ(Fp8E4M3ToF32(0x08), 1.0f / 64.0f);
  EXPECT_EQ(Fp8E4M3ToF32(0x3b), 1.375f);
  EXPECT_TRUE(std::signbit(Fp8E4M3ToF32(0x80)));
}

TEST(Fp8E4M3Test, EveryCodeRoundTripsAndCodesAreOrdered) {
  float prev = -1.0f;
  for (int c = 0; c < 256; ++c) {
    const auto code = static_cast<uint8_t>(c);
    if ((c & 0x7f) == 0x7f) continue;  // NaN
    const float v = Fp8E4M3ToF32(code);
    EXPECT_EQ(F32ToFp8E4M3(v), code) << c;
    if (c < 0x7f) {  // positive codes increase strictly with the value
      EXPECT_GT(v, prev) << c;
      prev = v;
    }
  }
}

TEST(Fp8E4M3Test, RoundsToTheNearestCodeEverywhere) {
  // Midpoints between neighbouring positive codes and a little either side of them.
  for (int c = 0; c < 0x7e; ++c) {
    const float lo = Fp8E4M3ToF32(static_cast<uint8_t>(c));
    const float hi = Fp8E4M3ToF32(static_cast<uint8_t>(c + 1));
    const float mid = 0.5f * (lo + hi);
    EXPECT_EQ(F32ToFp8E4M3(std::nextafter(mid, 0.0f)), c);
    EXPECT_EQ(F32ToFp8E4M3(std::nextafter(mid, 1000.0f)), c + 1);
    EXPECT_EQ(F32ToFp8E4M3(mid), (c % 2 == 0) ? c : c + 1) << "tie at " << mid;
  }
}

}  // namespace
}  // namespace sals
