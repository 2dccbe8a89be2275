#include <gtest/gtest.h>

#include <cmath>
#include <numbers>
#include <vector>

#include "engine/model/config.h"

namespace sals {
namespace {

ModelConfig Llama31Rope() {
  ModelConfig c;
  c.head_dim = 128;
  c.rope_theta = 500000.0;
  c.rope_scaling = {.type = RopeScalingType::kLlama3,
                    .factor = 8.0,
                    .low_freq_factor = 1.0,
                    .high_freq_factor = 4.0,
                    .original_max_position_embeddings = 8192};
  return c;
}

TEST(RopeTest, PlainFrequencies) {
  ModelConfig c;
  c.head_dim = 128;
  c.rope_theta = 10000.0;
  const std::vector<double> f = RopeInverseFrequencies(c);
  ASSERT_EQ(f.size(), 64u);
  EXPECT_EQ(f[0], 1.0);
  EXPECT_NEAR(f[1], 0.8659643233600653, 1e-15);  // 10000^(-2/128)
  EXPECT_NEAR(f[32], 0.01, 1e-15);               // 10000^(-64/128)
  EXPECT_NEAR(f[63], 1.1547819846894583e-4, 1e-18);
  for (size_t i = 1; i < f.size(); ++i) EXPECT_LT(f[i], f[i - 1]);
}

TEST(RopeTest, SmallHeadDim) {
  ModelConfig c;
  c.head_dim = 4;
  c.rope_theta = 100.0;
  const std::vector<double> f = RopeInverseFrequencies(c);
  ASSERT_EQ(f.size(), 2u);
  EXPECT_DOUBLE_EQ(f[0], 1.0);
  EXPECT_DOUBLE_EQ(f[1], 0.1);  // 100^(-2/4)
}

// Hand-computed with transformers' _compute_llama3_parameters formula for Llama 3.1
// (theta 500000, head_dim 128, factor 8, low 1, high 4, original 8192): wavelengths below 2048
// are kept, above 8192 divided by 8, and pairs 29..34 interpolated.
TEST(RopeTest, Llama3ScalingMatchesHandComputedValues) {
  const std::vector<double> f = RopeInverseFrequencies(Llama31Rope());
  ASSERT_EQ(f.size(), 64u);
  struct Expected {
    int i;
    double value;
  };
  const Expected expected[] = {
      {0, 1.0},                         // high frequency: unchanged
      {1, 0.8146172338565447},          // 500000^(-2/128)
      {28, 0.0032114459947525913},      // wavelength 1956 < 2048: unchanged
      {29, 0.002166570763503359},       // smooth 0.8036
      {30, 0.0013718935677611381},      // smooth 0.5928
      {31, 0.0008567514129196321},      // smooth 0.4212
      {34, 0.00017850781276799638},     // smooth 0.0745
      {35, 0.0007644969883171747 / 8},  // wavelength 8219 > 8192: divided by 8
      {40, 0.0002742481756762073 / 8},
      {63, 2.455140791131609e-06 / 8},
  };
  for (const Expected& e : expected) {
    EXPECT_NEAR(f[e.i], e.value, 1e-13 * e.value) << "pair " << e.i;
  }
}

TEST(RopeTest, Llama3ScalingBandsFollowWavelength) {
  const ModelConfig c = Llama31Rope();
  ModelConfig plain = c;
  plain.rope_scaling = RopeScaling{};
  const std::vector<double> scaled = RopeInverseFrequencies(c);
  const std::vector<double> base = RopeInverseFrequencies(plain);
  for (size_t i = 0; i < base.size(); ++i) {
    const double wavelen = 2 * std::numbers::pi / base[i];
    if (wavelen < 2048) {
      EXPECT_EQ(scaled[i], base[i]) << i;
    } else if (wavelen > 8192) {
      EXPECT_DOUBLE_EQ(scaled[i], base[i] / 8) << i;
    } else {
      EXPECT_LT(scaled[i], base[i]) << i;
      EXPECT_GT(scaled[i], base[i] / 8) << i;
    }
  }
}

}  // namespace
}  // namespace sals
