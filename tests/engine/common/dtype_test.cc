#include "engine/common/dtype.h"

#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

namespace sals {
namespace {

uint32_t Bits(float f) { return std::bit_cast<uint32_t>(f); }

TEST(DTypeTest, SizesAndNames) {
  EXPECT_EQ(DTypeSize(DType::kF32), 4u);
  EXPECT_EQ(DTypeSize(DType::kF16), 2u);
  EXPECT_EQ(DTypeSize(DType::kBF16), 2u);
  EXPECT_EQ(DTypeName(DType::kF32), "F32");
  EXPECT_EQ(DTypeName(DType::kF16), "F16");
  EXPECT_EQ(DTypeName(DType::kBF16), "BF16");
}

// Every fp16 value survives fp16 -> fp32 -> fp16 bit-exactly; NaNs stay NaNs.
TEST(DTypeTest, F16RoundTripsAllBitPatterns) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = F16ToF32(static_cast<uint16_t>(h));
    const bool nan = (h & 0x7c00u) == 0x7c00u && (h & 0x3ffu) != 0;
    ASSERT_EQ(std::isnan(f), nan) << std::hex << h;
    if (nan) {
      const uint16_t back = F32ToF16(f);
      ASSERT_TRUE((back & 0x7c00u) == 0x7c00u && (back & 0x3ffu) != 0) << std::hex << h;
      ASSERT_EQ(back & 0x8000u, h & 0x8000u) << std::hex << h;
    } else {
      ASSERT_EQ(F32ToF16(f), h) << std::hex << h;
    }
  }
}

// The decoded value of every fp16 pattern, checked against ldexp arithmetic.
TEST(DTypeTest, F16DecodesAllBitPatterns) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const int exp = (h >> 10) & 0x1f;
    const int mant = h & 0x3ff;
    if (exp == 31) continue;  // inf/NaN covered above
    double v = exp == 0 ? std::ldexp(mant, -24) : std::ldexp(1024 + mant, exp - 25);
    if (h & 0x8000u) v = -v;
    ASSERT_EQ(static_cast<double>(F16ToF32(static_cast<uint16_t>(h))), v) << std::hex << h;
  }
  EXPECT_EQ(F16ToF32(0x7c00), std::numeric_limits<float>::infinity());
  EXPECT_EQ(F16ToF32(0xfc00), -std::numeric_limits<float>::infinity());
}

TEST(DTypeTest, Bf16RoundTripsAllBitPatterns) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = Bf16ToF32(static_cast<uint16_t>(h));
    ASSERT_EQ(Bits(f), h << 16);
    if (std::isnan(f)) {
      const uint16_t back = F32ToBf16(f);
      ASSERT_TRUE(std::isnan(Bf16ToF32(back))) << std::hex << h;
      ASSERT_EQ(back & 0x8000u, h & 0x8000u) << std::hex << h;
    } else {
      ASSERT_EQ(F32ToBf16(f), h) << std::hex << h;
    }
  }
}

// Midpoints between consecutive fp16 values round to the even neighbour; just above or below
// a midpoint rounds to the nearer one. Covers subnormals, normals and the overflow boundary.
TEST(DTypeTest, F16RoundsToNearestEvenEverywhere) {
  for (uint32_t h = 0; h < 0x7c00; ++h) {
    const double lo = F16ToF32(static_cast<uint16_t>(h));
    const double hi = h + 1 == 0x7c00 ? 65536.0 : F16ToF32(static_cast<uint16_t>(h + 1));
    const float mid = static_cast<float>((lo + hi) / 2);  // exact in fp32
    ASSERT_EQ(static_cast<double>(mid), (lo + hi) / 2);
    const uint16_t even = (h & 1u) ? static_cast<uint16_t>(h + 1) : static_cast<uint16_t>(h);
    ASSERT_EQ(F32ToF16(mid), even) << std::hex << h;
    ASSERT_EQ(F32ToF16(std::nextafter(mid, 0.0f)), h) << std::hex << h;
    ASSERT_EQ(F32ToF16(std::nextafter(mid, 1e9f)), h + 1) << std::hex << h;
    ASSERT_EQ(F32ToF16(-mid), even | 0x8000u) << std::hex << h;
  }
}

TEST(DTypeTest, F16ChosenValues) {
  EXPECT_EQ(F32ToF16(1.0f), 0x3c00);
  EXPECT_EQ(F32ToF16(-2.0f), 0xc000);
  EXPECT_EQ(F32ToF16(65504.0f), 0x7bff);  // largest finite
  EXPECT_EQ(F32ToF16(65519.0f), 0x7bff);  // below the midpoint to 65536
  EXPECT_EQ(F32ToF16(65520.0f), 0x7c00);  // the midpoint rounds (to even) to infinity
  EXPECT_EQ(F32ToF16(1e10f), 0x7c00);
  EXPECT_EQ(F32ToF16(-std::numeric_limits<float>::infinity()), 0xfc00);
  EXPECT_EQ(F32ToF16(std::ldexp(1.0f, -24)), 0x0001);  // smallest subnormal
  EXPECT_EQ(F32ToF16(std::ldexp(1.0f, -25)), 0x0000);  // half of it: ties to even (zero)
  EXPECT_EQ(F32ToF16(std::ldexp(1.5f, -25)), 0x0001);
  EXPECT_EQ(F32ToF16(std::ldexp(3.0f, -25)), 0x0002);             // 1.5 steps: ties to even (2)
  EXPECT_EQ(F32ToF16(std::ldexp(1.0f, -14)), 0x0400);             // smallest normal
  EXPECT_EQ(F32ToF16(1.0f + std::ldexp(1.0f, -11)), 0x3c00);      // tie -> even (down)
  EXPECT_EQ(F32ToF16(1.0f + 3 * std::ldexp(1.0f, -11)), 0x3c02);  // tie -> even (up)
  EXPECT_EQ(F32ToF16(-0.0f), 0x8000);
  EXPECT_EQ(F32ToF16(std::numeric_limits<float>::denorm_min()), 0x0000);
}

TEST(DTypeTest, Bf16ChosenValues) {
  EXPECT_EQ(F32ToBf16(1.0f), 0x3f80);
  EXPECT_EQ(F32ToBf16(std::bit_cast<float>(0x3f808000u)), 0x3f80);  // tie -> even (down)
  EXPECT_EQ(F32ToBf16(std::bit_cast<float>(0x3f818000u)), 0x3f82);  // tie -> even (up)
  EXPECT_EQ(F32ToBf16(std::bit_cast<float>(0x3f808001u)), 0x3f81);  // above the tie
  EXPECT_EQ(F32ToBf16(std::bit_cast<float>(0x3f807fffu)), 0x3f80);  // below the tie
  EXPECT_EQ(F32ToBf16(std::numeric_limits<float>::max()), 0x7f80);  // rounds up to infinity
  EXPECT_EQ(F32ToBf16(-std::numeric_limits<float>::infinity()), 0xff80);
  EXPECT_EQ(F32ToBf16(-0.0f), 0x8000);
  // A signalling NaN whose payload sits only in the dropped bits must not become infinity.
  EXPECT_TRUE(std::isnan(Bf16ToF32(F32ToBf16(std::bit_cast<float>(0x7f800001u)))));
}

TEST(DTypeTest, ConvertDTypeBetweenAllPairs) {
  const std::vector<float> values = {0.0f, -1.5f, 3.140625f, 65504.0f, 1e-3f, -7.0f, 0.5f};
  const size_t n = values.size();
  for (DType src : {DType::kF32, DType::kF16, DType::kBF16}) {
    // Unaligned source and destination, as inside a mapped safetensors file.
    std::vector<std::byte> s(n * DTypeSize(src) + 1);
    ConvertDType(DType::kF32, values.data(), src, s.data() + 1, n);
    std::vector<float> ref(n);
    ConvertDType(src, s.data() + 1, DType::kF32, ref.data(), n);
    for (DType dst : {DType::kF32, DType::kF16, DType::kBF16}) {
      std::vector<std::byte> d(n * DTypeSize(dst) + 3);
      ConvertDType(src, s.data() + 1, dst, d.data() + 3, n);
      std::vector<float> got(n);
      ConvertDType(dst, d.data() + 3, DType::kF32, got.data(), n);
      for (size_t i = 0; i < n; ++i) {
        // Converting the src value straight to dst, through fp32, is the one rounding allowed.
        float want = ref[i];
        if (dst == DType::kF16) want = F16ToF32(F32ToF16(ref[i]));
        if (dst == DType::kBF16) want = Bf16ToF32(F32ToBf16(ref[i]));
        EXPECT_EQ(got[i], want) << DTypeName(src) << "->" << DTypeName(dst) << " #" << i;
      }
    }
  }
}

TEST(DTypeTest, ConvertDTypeLongerThanOneChunk) {
  std::vector<float> src(5000);
  // Quarter steps in [-250, 250) are exact in fp16.
  for (size_t i = 0; i < src.size(); ++i) src[i] = static_cast<float>(i % 2000) * 0.25f - 250.0f;
  std::vector<uint16_t> half(src.size());
  ConvertDType(DType::kF32, src.data(), DType::kF16, half.data(), src.size());
  for (size_t i = 0; i < src.size(); ++i) ASSERT_EQ(half[i], F32ToF16(src[i])) << i;
  std::vector<float> back(src.size());
  ConvertToF32(DType::kF16, half.data(), back.data(), back.size());
  EXPECT_EQ(back, src);
}

}  // namespace
}  // namespace sals
