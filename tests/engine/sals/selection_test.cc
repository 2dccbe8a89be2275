// The selection policy's edge cases: plans for short contexts, budgets and select_all; top-k with
// ties, NaN and k outside [0, n].
#include "engine/sals/selection.h"

#include <cmath>
#include <vector>

#include "engine/sals/policy.h"
#include "gtest/gtest.h"

namespace sals {
namespace {

SalsPolicy Policy(double fraction = 0.125, int budget = 0, int sinks = 16, int recent = 64) {
  SalsPolicy p;
  p.topk_fraction = fraction;
  p.token_budget = budget;
  p.sink_tokens = sinks;
  p.recent_tokens = recent;
  return p;
}

void ExpectPlan(const SelectionPlan& plan, int64_t sink_end, int64_t recent_begin, int64_t topk) {
  EXPECT_EQ(plan.sink_end, sink_end);
  EXPECT_EQ(plan.recent_begin, recent_begin);
  EXPECT_EQ(plan.topk, topk);
}

TEST(PlanSelectionTest, ContextShorterThanSinksAndRecentAttendsEverything) {
  ExpectPlan(PlanSelection(Policy(), 0), 1, 1, 0);     // the first token is a sink
  ExpectPlan(PlanSelection(Policy(), 10), 11, 11, 0);  // all sinks, no middle
  ExpectPlan(PlanSelection(Policy(), 40), 16, 16, 0);  // 16 sinks + 25 recent
  ExpectPlan(PlanSelection(Policy(), 79), 16, 16, 0);  // exactly 16 + 64
  ExpectPlan(PlanSelection(Policy(), 80), 16, 17, 1);  // one middle token, ceil(81/8) > 1
}

TEST(PlanSelectionTest, FractionOfTheWholeContextRoundedUp) {
  // Context 1001: middle [16, 937), k = ceil(0.125 * 1001) = 126.
  ExpectPlan(PlanSelection(Policy(), 1000), 16, 937, 126);
  ExpectPlan(PlanSelection(Policy(0.5), 1000), 16, 937, 501);
  ExpectPlan(PlanSelection(Policy(1.0), 1000), 16, 937, 921);  // clamped to the middle
}

TEST(PlanSelectionTest, TokenBudgetCapsTheFraction) {
  ExpectPlan(PlanSelection(Policy(0.125, 50), 1000), 16, 937, 50);
  ExpectPlan(PlanSelection(Policy(0.125, 500), 1000), 16, 937, 126);
  // A budget alone (no fraction) selects that many.
  ExpectPlan(PlanSelection(Policy(0.0, 50), 1000), 16, 937, 50);
  ExpectPlan(PlanSelection(Policy(0.0, 5000), 1000), 16, 937, 921);
}

TEST(PlanSelectionTest, SelectAllTakesTheWholeMiddle) {
  SalsPolicy p = Policy(0.125, 10);
  p.select_all = true;
  ExpectPlan(PlanSelection(p, 1000), 16, 937, 921);
}

TEST(PlanSelectionTest, NoSinksAndMinimalRecentWindow) {
  ExpectPlan(PlanSelection(Policy(0.25, 0, 0, 1), 99), 0, 99, 25);
}

TEST(PolicyTest, ResolvesRankAndScoreDimsAgainstStorage) {
  SalsStorage storage;
  storage.rank = 32;
  SalsPolicy p;
  EXPECT_EQ(p.Resolved(storage).rank, 32);
  EXPECT_EQ(p.Resolved(storage).score_dims, 16);
  p.rank = 1;
  EXPECT_EQ(p.Resolved(storage).score_dims, 1);
  p.rank = 8;
  p.score_dims = 8;
  EXPECT_EQ(p.Resolved(storage).score_dims, 8);
}

TEST(PolicyTest, RejectsValuesOutsideStorageAndRanges) {
  SalsStorage storage;
  storage.rank = 32;
  EXPECT_TRUE(ValidateSalsPolicy(SalsPolicy{}, storage).ok());
  auto invalid = [&](auto edit) {
    SalsPolicy p;
    edit(p);
    return ValidateSalsPolicy(p, storage).code() == absl::StatusCode::kInvalidArgument;
  };
  EXPECT_TRUE(invalid([](SalsPolicy& p) { p.rank = 33; }));
  EXPECT_TRUE(invalid([](SalsPolicy& p) { p.score_dims = 33; }));
  EXPECT_TRUE(invalid([](SalsPolicy& p) { p.topk_fraction = 1.5; }));
  EXPECT_TRUE(invalid([](SalsPolicy& p) { p.topk_fraction = std::nan(""); }));
  EXPECT_TRUE(invalid([](SalsPolicy& p) { p.token_budget = -1; }));
  EXPECT_TRUE(invalid([](SalsPolicy& p) { p.topk_fraction = 0.0; }));
  EXPECT_TRUE(invalid([](SalsPolicy& p) { p.sink_tokens = 17; }));
  EXPECT_TRUE(invalid([](SalsPolicy& p) { p.recent_tokens = 0; }));
  EXPECT_TRUE(invalid([](SalsPolicy& p) { p.recent_tokens = 65; }));
  SalsPolicy all;
  all.select_all = true;
  all.topk_fraction = 0.0;
  EXPECT_TRUE(ValidateSalsPolicy(all, storage).ok());
}

TEST(SelectTopKTest, LargestScoresInIndexOrder) {
  const std::vector<float> s = {0.5f, 3.0f, -1.0f, 2.0f, 7.0f};
  EXPECT_EQ(SelectTopK(s, 3), (std::vector<int64_t>{1, 3, 4}));
}

TEST(SelectTopKTest, TiesGoToTheSmallerIndex) {
  const std::vector<float> s = {1.0f, 2.0f, 1.0f, 2.0f, 1.0f};
  EXPECT_EQ(SelectTopK(s, 1), (std::vector<int64_t>{1}));
  EXPECT_EQ(SelectTopK(s, 3), (std::vector<int64_t>{0, 1, 3}));
  const std::vector<float> flat(100, 0.25f);
  EXPECT_EQ(SelectTopK(flat, 2), (std::vector<int64_t>{0, 1}));
}

TEST(SelectTopKTest, NanRanksBelowNumbers) {
  const float nan = std::nanf("");
  const std::vector<float> s = {nan, -5.0f, nan, -1e30f, 0.0f};
  EXPECT_EQ(SelectTopK(s, 3), (std::vector<int64_t>{1, 3, 4}));
  EXPECT_EQ(SelectTopK(s, 4), (std::vector<int64_t>{0, 1, 3, 4}));
  const std::vector<float> all_nan(3, nan);
  EXPECT_EQ(SelectTopK(all_nan, 2), (std::vector<int64_t>{0, 1}));
}

TEST(SelectTopKTest, KOutsideZeroToNIsClamped) {
  const std::vector<float> s = {3.0f, 1.0f, 2.0f};
  EXPECT_EQ(SelectTopK(s, 10), (std::vector<int64_t>{0, 1, 2}));
  EXPECT_TRUE(SelectTopK(s, 0).empty());
  EXPECT_TRUE(SelectTopK(s, -2).empty());
  EXPECT_TRUE(SelectTopK({}, 4).empty());
}

}  // namespace
}  // namespace sals
