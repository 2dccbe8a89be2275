// The selection policy's edge cases: plans for short contexts, budgets and select_all; top-k with
// ties, NaN and k outside [0, n]; the latent queries of shared and per-KV-head selection.
#include "engine/sals/selection.h"

#include <cmath>
#include <random>
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

TEST(PolicyTest, SelectionNamesRoundTripAndUnknownOnesAreRefused) {
  for (SalsSelection s : {SalsSelection::kShared, SalsSelection::kPerKvHead}) {
    auto parsed = ParseSalsSelection(SalsSelectionName(s));
    ASSERT_TRUE(parsed.ok()) << parsed.status();
    EXPECT_EQ(*parsed, s);
  }
  EXPECT_EQ(SalsSelectionName(SalsSelection::kPerKvHead), "per_kv_head");
  const auto bad = ParseSalsSelection("per_head");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("per_head"), std::string_view::npos);
  SalsStorage storage;
  storage.rank = 32;
  SalsPolicy p;
  p.selection = SalsSelection::kPerKvHead;
  EXPECT_TRUE(ValidateSalsPolicy(p, storage).ok());
  p.selection = static_cast<SalsSelection>(7);
  EXPECT_EQ(ValidateSalsPolicy(p, storage).code(), absl::StatusCode::kInvalidArgument);
}

ModelConfig Heads(int num_heads, int num_kv_heads, int head_dim) {
  ModelConfig c;
  c.num_layers = 1;
  c.num_heads = num_heads;
  c.num_kv_heads = num_kv_heads;
  c.head_dim = head_dim;
  return c;
}

std::vector<float> Gaussian(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal;
  std::vector<float> v(n);
  for (float& x : v) x = normal(rng);
  return v;
}

// Scores of `latents` (rows of score_dims values) against one latent query row.
std::vector<float> Scores(std::span<const float> q, std::span<const float> latents, int dims) {
  std::vector<float> out(latents.size() / dims);
  for (size_t t = 0; t < out.size(); ++t) {
    for (int j = 0; j < dims; ++j) out[t] += q[j] * latents[t * dims + j];
  }
  return out;
}

TEST(LatentQueriesTest, PerKvHeadRowsSumToTheSharedQuery) {
  const ModelConfig c = Heads(8, 2, 16);  // GQA group 4, D = 32
  const int rank = 12, dims = 6;
  const std::vector<float> u = Gaussian(static_cast<size_t>(c.kv_width()) * rank, 1);
  const std::vector<float> q = Gaussian(c.q_width(), 2);
  const auto shared = LatentQueries(c, u, rank, dims, q.data(), SalsSelection::kShared);
  const auto per = LatentQueries(c, u, rank, dims, q.data(), SalsSelection::kPerKvHead);
  ASSERT_EQ(shared.size(), static_cast<size_t>(dims));
  ASSERT_EQ(per.size(), static_cast<size_t>(2 * dims));
  EXPECT_EQ(SelectionLists(c, SalsSelection::kShared), 1);
  EXPECT_EQ(SelectionLists(c, SalsSelection::kPerKvHead), 2);
  for (int j = 0; j < dims; ++j) EXPECT_NEAR(per[j] + per[dims + j], shared[j], 1e-4f);
  // Row 1 depends only on KV head 1's query group and rows of U: zeroing head 0's queries
  // (query heads 0..3) leaves it unchanged and makes row 0 zero.
  std::vector<float> q1 = q;
  std::fill(q1.begin(), q1.begin() + 4 * c.head_dim, 0.0f);
  const auto per1 = LatentQueries(c, u, rank, dims, q1.data(), SalsSelection::kPerKvHead);
  for (int j = 0; j < dims; ++j) {
    EXPECT_EQ(per1[j], 0.0f);
    EXPECT_EQ(per1[dims + j], per[dims + j]);
  }
}

TEST(LatentQueriesTest, OneKvHeadPerHeadIsTheSharedSelection) {
  const ModelConfig c = Heads(4, 1, 16);  // every query head in one group
  const int rank = 8, dims = 4;
  const std::vector<float> u = Gaussian(static_cast<size_t>(c.kv_width()) * rank, 3);
  const std::vector<float> q = Gaussian(c.q_width(), 4);
  const std::vector<float> latents = Gaussian(200 * dims, 5);
  const auto shared = LatentQueries(c, u, rank, dims, q.data(), SalsSelection::kShared);
  const auto per = LatentQueries(c, u, rank, dims, q.data(), SalsSelection::kPerKvHead);
  EXPECT_EQ(SelectionLists(c, SalsSelection::kPerKvHead), 1);
  EXPECT_EQ(shared, per);  // bit for bit
  EXPECT_EQ(SelectTopK(Scores(shared, latents, dims), 25),
            SelectTopK(Scores(per, latents, dims), 25));
}

TEST(LatentQueriesTest, PerKvHeadFindsTheNeedleTheSharedTopKMisses) {
  // Two KV heads of head_dim 2 (one query head each), identity basis: latents are the keys.
  // Token 3 is KV head 0's needle (a moderate match); KV head 1 matches tokens 0..2 strongly,
  // so in the shared sum they outrank it.
  const ModelConfig c = Heads(2, 2, 2);
  const int rank = 4, dims = 4;
  std::vector<float> u(16, 0.0f);
  for (int i = 0; i < 4; ++i) u[i * rank + i] = 1.0f;
  const std::vector<float> q = {1.0f, 0.0f, 1.0f, 0.0f};
  const std::vector<float> latents = {
      0.0f, 0.0f, 5.0f, 0.0f,  // 0: head 1 only
      0.0f, 0.0f, 4.0f, 0.0f,  // 1: head 1 only
      0.0f, 0.0f, 3.0f, 0.0f,  // 2: head 1 only
      2.0f, 0.0f, 0.0f, 0.0f,  // 3: head 0's needle
      0.5f, 0.0f, 0.0f, 0.0f,  // 4: a weaker head-0 match
  };
  const auto shared = LatentQueries(c, u, rank, dims, q.data(), SalsSelection::kShared);
  const auto per = LatentQueries(c, u, rank, dims, q.data(), SalsSelection::kPerKvHead);
  EXPECT_EQ(SelectTopK(Scores(shared, latents, dims), 2), (std::vector<int64_t>{0, 1}));
  const std::span<const float> per_rows(per);
  EXPECT_EQ(SelectTopK(Scores(per_rows.subspan(0, dims), latents, dims), 2),
            (std::vector<int64_t>{3, 4}));
  EXPECT_EQ(SelectTopK(Scores(per_rows.subspan(dims, dims), latents, dims), 2),
            (std::vector<int64_t>{0, 1}));
  // Ties within a head's list go to the smaller index, as in the shared selection.
  const std::vector<float> tied = {1.0f, 0.0f, 0.0f, 0.0f, 1.0f, 0.0f,
                                   0.0f, 0.0f, 1.0f, 0.0f, 0.0f, 0.0f};
  EXPECT_EQ(SelectTopK(Scores(per_rows.subspan(0, dims), tied, dims), 2),
            (std::vector<int64_t>{0, 1}));
}

}  // namespace
}  // namespace sals
