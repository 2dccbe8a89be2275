// Layer-adaptive rank: captured energy per rank, and the greedy allocation at a total budget
// (multiples of 8, dense layers left out, flat spectra getting more than steep ones).
#include "engine/sals/rank_allocation.h"

#include <numeric>
#include <vector>

#include "gtest/gtest.h"

namespace sals {
namespace {

// Descending eigenvalues decay^i of width 32.
std::vector<double> Geometric(double decay, int width = 32) {
  std::vector<double> e(width);
  double v = 1.0;
  for (double& x : e) {
    x = v;
    v *= decay;
  }
  return e;
}

TEST(RankAllocationTest, CapturedEnergyIsTheTopEigenvaluesShare) {
  const std::vector<double> e = {4.0, 2.0, 1.0, 1.0};
  EXPECT_DOUBLE_EQ(CapturedEnergy(e, 0), 0.0);
  EXPECT_DOUBLE_EQ(CapturedEnergy(e, 1), 0.5);
  EXPECT_DOUBLE_EQ(CapturedEnergy(e, 3), 7.0 / 8.0);
  EXPECT_DOUBLE_EQ(CapturedEnergy(e, 9), 1.0);  // clamped to the width
  EXPECT_DOUBLE_EQ(CapturedEnergy(std::vector<double>(4, 0.0), 2), 0.0);
}

TEST(RankAllocationTest, EqualSpectraGetTheUniformRank) {
  const std::vector<std::vector<double>> eig(4, Geometric(0.9));
  const std::vector<int> layers = {0, 1, 2, 3};
  auto ranks = AllocateLayerRanks(eig, layers, 4 * 16);
  ASSERT_TRUE(ranks.ok()) << ranks.status();
  EXPECT_EQ(*ranks, (std::vector<int>{16, 16, 16, 16}));
}

TEST(RankAllocationTest, FlatSpectraGetMoreRankDenseLayersNone) {
  // Layer 1 is nearly rank 8 (steep), layer 2 flat, layer 0 kept dense.
  const std::vector<std::vector<double>> eig = {Geometric(0.9), Geometric(0.3), Geometric(0.99)};
  const std::vector<int> layers = {1, 2};
  auto ranks = AllocateLayerRanks(eig, layers, 2 * 16);
  ASSERT_TRUE(ranks.ok()) << ranks.status();
  EXPECT_EQ((*ranks)[0], 0);
  EXPECT_EQ((*ranks)[1], 8);
  EXPECT_EQ((*ranks)[2], 24);
  for (int r : *ranks) EXPECT_EQ(r % kRankStep, 0);
  // The sum of captured fractions beats the uniform rank's.
  const double uniform = CapturedEnergy(eig[1], 16) + CapturedEnergy(eig[2], 16);
  const double adaptive = CapturedEnergy(eig[1], 8) + CapturedEnergy(eig[2], 24);
  EXPECT_GT(adaptive, uniform);
}

TEST(RankAllocationTest, RanksStayWithinTheWidth) {
  // All of the budget the flat layer could take stops at the width (32).
  const std::vector<std::vector<double>> eig = {Geometric(0.1), Geometric(1.0)};
  const std::vector<int> layers = {0, 1};
  auto ranks = AllocateLayerRanks(eig, layers, 48);
  ASSERT_TRUE(ranks.ok()) << ranks.status();
  EXPECT_EQ(*ranks, (std::vector<int>{16, 32}));
}

TEST(RankAllocationTest, BadBudgetsAndLayersAreRefused) {
  const std::vector<std::vector<double>> eig(2, Geometric(0.9));
  const std::vector<int> both = {0, 1}, outside = {0, 2}, none = {};
  EXPECT_FALSE(AllocateLayerRanks(eig, both, 36).ok());  // not a multiple of 8
  EXPECT_FALSE(AllocateLayerRanks(eig, both, 8).ok());   // less than 8 per layer
  EXPECT_FALSE(AllocateLayerRanks(eig, both, 72).ok());  // more than the width per layer
  EXPECT_FALSE(AllocateLayerRanks(eig, outside, 16).ok());
  EXPECT_FALSE(AllocateLayerRanks(eig, none, 16).ok());
}

}  // namespace
}  // namespace sals
