#include "engine/sampling/logits_processors.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <random>
#include <span>
#include <utility>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace sals {
namespace {

using ::testing::ElementsAre;
using ::testing::ElementsAreArray;
using ::testing::FloatEq;
using ::testing::IsEmpty;

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

// The two vLLM penalty steps alone, through the penalty list.
void ApplyRepetitionPenalty(std::span<float> logits, std::span<const int32_t> prompt,
                            std::span<const int32_t> output, float penalty) {
  ApplyPenalties(logits, CollectPenaltyTokens(prompt, output, /*include_prompt=*/true), penalty,
                 0.0f, 0.0f);
}

void ApplyFrequencyPresencePenalties(std::span<float> logits, std::span<const int32_t> output,
                                     float frequency, float presence) {
  ApplyPenalties(logits, CollectPenaltyTokens({}, output, /*include_prompt=*/false), 1.0f,
                 frequency, presence);
}

std::vector<int32_t> Ids(std::vector<Candidate> candidates) {
  std::vector<int32_t> ids;
  for (const Candidate& c : candidates) ids.push_back(c.id);
  std::sort(ids.begin(), ids.end());
  return ids;
}

std::vector<int32_t> Select(const std::vector<float>& logits, CandidateFilter filter) {
  std::vector<Candidate> out;
  SelectCandidates(logits, filter, &out);
  for (const Candidate& c : out) EXPECT_GT(c.weight, 0.0f) << c.id;
  return Ids(out);
}

TEST(SanitizeLogitsTest, NanBecomesNegativeInfinity) {
  std::vector<float> logits = {1.0f, kNaN, -kInf, kInf, -kNaN};
  SanitizeLogits(logits);
  EXPECT_THAT(logits, ElementsAre(1.0f, -kInf, -kInf, kInf, -kInf));
}

TEST(RepetitionPenaltyTest, DividesPositiveMultipliesOthersOncePerDistinctToken) {
  std::vector<float> logits = {2.0f, -2.0f, 0.0f, 3.0f, 1.0f};
  const std::vector<int32_t> prompt = {0, 1, 1, 0};
  const std::vector<int32_t> output = {2, 0, 1};
  ApplyRepetitionPenalty(logits, prompt, output, 2.0f);
  // 0: 2 / 2 (once, though it occurs 3 times); 1: -2 * 2; 2: 0 is not > 0 -> 0 * 2; 3, 4 unseen.
  EXPECT_THAT(logits, ElementsAre(1.0f, -4.0f, 0.0f, 3.0f, 1.0f));

  // Scratch state is reset: a second row gets exactly the same treatment.
  std::vector<float> again = {2.0f, -2.0f, 0.0f, 3.0f, 1.0f};
  ApplyRepetitionPenalty(again, prompt, output, 2.0f);
  EXPECT_EQ(again, logits);
}

TEST(RepetitionPenaltyTest, BelowOneEncouragesRepeats) {
  std::vector<float> logits = {2.0f, -2.0f, 5.0f};
  const std::vector<int32_t> output = {0, 1};
  ApplyRepetitionPenalty(logits, {}, output, 0.5f);
  EXPECT_THAT(logits, ElementsAre(4.0f, -1.0f, 5.0f));
}

TEST(RepetitionPenaltyTest, IgnoresOutOfVocabIdsAndOneIsNoOp) {
  std::vector<float> logits = {2.0f, 4.0f};
  const std::vector<int32_t> prompt = {-1, 2, 1000000, 1};
  ApplyRepetitionPenalty(logits, prompt, {}, 1.0f);
  EXPECT_THAT(logits, ElementsAre(2.0f, 4.0f));
  ApplyRepetitionPenalty(logits, prompt, {}, 4.0f);
  EXPECT_THAT(logits, ElementsAre(2.0f, 1.0f));
}

TEST(FrequencyPresencePenaltyTest, HandComputed) {
  std::vector<float> logits = {1.0f, 1.0f, 1.0f, 1.0f};
  const std::vector<int32_t> output = {0, 0, 2, 0, 7, -3};
  ApplyFrequencyPresencePenalties(logits, output, 0.5f, 0.25f);
  // 0: count 3 -> 1 - 0.5 * 3 - 0.25; 2: count 1 -> 1 - 0.5 - 0.25; 1 and 3 absent.
  EXPECT_THAT(logits, ElementsAre(FloatEq(-0.75f), 1.0f, FloatEq(0.25f), 1.0f));
}

TEST(FrequencyPresencePenaltyTest, FrequencyOnlyPresenceOnlyAndNegative) {
  const std::vector<int32_t> output = {1, 1, 3};
  std::vector<float> freq = {0.0f, 0.0f, 0.0f, 0.0f};
  ApplyFrequencyPresencePenalties(freq, output, 1.5f, 0.0f);
  EXPECT_THAT(freq, ElementsAre(0.0f, -3.0f, 0.0f, -1.5f));

  std::vector<float> pres = {0.0f, 0.0f, 0.0f, 0.0f};
  ApplyFrequencyPresencePenalties(pres, output, 0.0f, 2.0f);
  EXPECT_THAT(pres, ElementsAre(0.0f, -2.0f, 0.0f, -2.0f));

  std::vector<float> negative = {0.0f, 0.0f, 0.0f, 0.0f};
  ApplyFrequencyPresencePenalties(negative, output, -1.0f, -0.5f);
  EXPECT_THAT(negative, ElementsAre(0.0f, 2.5f, 0.0f, 1.5f));

  // Counts were reset: applying again subtracts the same amounts again.
  ApplyFrequencyPresencePenalties(negative, output, -1.0f, -0.5f);
  EXPECT_THAT(negative, ElementsAre(0.0f, 5.0f, 0.0f, 3.0f));
}

TEST(GreedyArgmaxTest, PicksMaxLowestIdOnTies) {
  EXPECT_EQ(GreedyArgmax(std::vector<float>{0.1f, 0.7f, 0.2f}), 1);
  EXPECT_EQ(GreedyArgmax(std::vector<float>{0.1f, 0.7f, 0.7f, 0.7f}), 1);
  EXPECT_EQ(GreedyArgmax(std::vector<float>{3.0f, 3.0f}), 0);
  EXPECT_EQ(GreedyArgmax(std::vector<float>{-kInf, -kInf, -kInf}), 0);
  EXPECT_EQ(GreedyArgmax(std::vector<float>{-kInf, 1.0f, kInf, kInf}), 2);
  EXPECT_EQ(GreedyArgmax(std::vector<float>{}), 0);
}

TEST(KthLargestTest, MatchesSortForSmallAndLargeK) {
  std::mt19937_64 rng(7);
  std::vector<float> logits(5000);
  // Few distinct values, so duplicates straddle the k-th position.
  for (float& l : logits) l = static_cast<float>(rng() % 200) * 0.25f;
  std::vector<float> sorted = logits;
  std::sort(sorted.begin(), sorted.end(), std::greater<>());
  for (int64_t k : {1, 2, 50, 1024, 1025, 3000, 5000}) {
    EXPECT_EQ(KthLargest(logits, k), sorted[k - 1]) << "k=" << k;
  }
}

TEST(SelectCandidatesTest, NoFilterKeepsEveryFiniteTokenWithSoftmaxWeights) {
  const std::vector<float> logits = {1.0f, 3.0f, -kInf, 2.0f};
  std::vector<Candidate> out;
  SelectCandidates(logits, CandidateFilter{.temperature = 2.0f}, &out);
  ASSERT_EQ(Ids(out), (std::vector<int32_t>{0, 1, 3}));
  for (const Candidate& c : out) {
    EXPECT_NEAR(c.weight, std::exp((logits[c.id] - 3.0f) / 2.0f), 1e-6) << c.id;
  }
}

TEST(SelectCandidatesTest, TopK) {
  const std::vector<float> logits = {1.0f, 3.0f, 2.0f, 0.0f};
  EXPECT_THAT(Select(logits, {.top_k = 1}), ElementsAre(1));
  EXPECT_THAT(Select(logits, {.top_k = 2}), ElementsAre(1, 2));
  // Larger than the vocab, or disabled: everything.
  EXPECT_THAT(Select(logits, {.top_k = 4}), ElementsAre(0, 1, 2, 3));
  EXPECT_THAT(Select(logits, {.top_k = 100}), ElementsAre(0, 1, 2, 3));
  EXPECT_THAT(Select(logits, {.top_k = -1}), ElementsAre(0, 1, 2, 3));
  // vLLM keeps every token tied with the k-th largest.
  EXPECT_THAT(Select({3.0f, 2.0f, 2.0f, 1.0f}, {.top_k = 2}), ElementsAre(0, 1, 2));
}

TEST(SelectCandidatesTest, TopPExactBoundary) {
  // Equal logits: each token holds exactly 1/4 of the mass (exact in binary).
  const std::vector<float> logits = {0.5f, 0.5f, 0.5f, 0.5f};
  // Two tokens reach exactly 0.5, so the third (mass ahead = 0.5, not < 0.5) is dropped;
  // ties are ordered by id.
  EXPECT_THAT(Select(logits, {.top_p = 0.5f}), ElementsAre(0, 1));
  EXPECT_THAT(Select(logits, {.top_p = 0.25f}), ElementsAre(0));
  EXPECT_THAT(Select(logits, {.top_p = 0.75f}), ElementsAre(0, 1, 2));
  EXPECT_THAT(Select(logits, {.top_p = 0.5001f}), ElementsAre(0, 1, 2));
  EXPECT_THAT(Select(logits, {.top_p = 1.0f}), ElementsAre(0, 1, 2, 3));
  // Never fewer than one token.
  EXPECT_THAT(Select({1.0f, 9.0f, 2.0f}, {.top_p = 1e-6f}), ElementsAre(1));
}

TEST(SelectCandidatesTest, TopPIsOverTheTopKDistribution) {
  const std::vector<float> logits = {0.0f, 0.0f, 0.0f, 0.0f, -1.0f, -1.0f};
  // Within the top 4 each token has 1/4: two reach 0.5.
  EXPECT_THAT(Select(logits, {.top_k = 4, .top_p = 0.5f}), ElementsAre(0, 1));
  // Over all six each of the first four has ~0.21: three are needed.
  EXPECT_THAT(Select(logits, {.top_p = 0.5f}), ElementsAre(0, 1, 2));
}

TEST(SelectCandidatesTest, MinP) {
  const std::vector<float> logits = {0.0f, -0.5f, -2.0f, -3.0f};  // ratios 1, .61, .14, .05
  EXPECT_THAT(Select(logits, {.min_p = 0.1f}), ElementsAre(0, 1, 2));
  EXPECT_THAT(Select(logits, {.min_p = 0.5f}), ElementsAre(0, 1));
  EXPECT_THAT(Select(logits, {.min_p = 1.0f}), ElementsAre(0));
  // Temperature flattens first: ratios become 1, .78, .37, .22.
  EXPECT_THAT(Select(logits, {.temperature = 2.0f, .min_p = 0.2f}), ElementsAre(0, 1, 2, 3));
  // min_p = 1 keeps exactly the argmax ties.
  EXPECT_THAT(Select({5.0f, 1.0f, 5.0f}, {.min_p = 1.0f}), ElementsAre(0, 2));
}

TEST(SelectCandidatesTest, NonFiniteLogits) {
  EXPECT_THAT(Select({-kInf, -kInf}, {}), IsEmpty());
  EXPECT_THAT(Select({-kInf, -kInf}, {.top_k = 1, .top_p = 0.5f, .min_p = 0.5f}), IsEmpty());
  // +inf logits share all the mass.
  std::vector<Candidate> out;
  SelectCandidates(std::vector<float>{kInf, 1.0f, kInf, -kInf}, {}, &out);
  EXPECT_THAT(Ids(out), ElementsAre(0, 2));
  for (const Candidate& c : out) EXPECT_EQ(c.weight, 1.0f);
  EXPECT_THAT(Select({kInf, 1.0f, kInf}, {.top_p = 0.5f}), ElementsAre(0));
}

// Straightforward vLLM-style reference: full sort, double-precision softmax, then the masks
// one after another.
std::vector<int32_t> ReferenceSelect(const std::vector<float>& logits, const CandidateFilter& f) {
  const int n = static_cast<int>(logits.size());
  std::vector<int32_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
  });
  const double max = logits[order[0]];
  std::vector<double> p(n);
  for (int i = 0; i < n; ++i) p[i] = std::exp((logits[i] - max) / f.temperature);
  std::vector<bool> keep(n, true);
  if (f.top_k > 0 && f.top_k < n) {
    const float kth = logits[order[f.top_k - 1]];
    for (int i = 0; i < n; ++i) keep[i] = logits[i] >= kth;
  }
  double mass = 0.0;
  for (int i = 0; i < n; ++i) mass += keep[i] ? p[i] : 0.0;
  double ahead = 0.0;
  for (int32_t i : order) {
    if (!keep[i] || f.top_p == 1.0f) continue;  // 1 disables top-p (no rounding-eaten tail)
    if (ahead >= f.top_p * mass) keep[i] = false;
    ahead += p[i];
  }
  std::vector<int32_t> ids;
  for (int i = 0; i < n; ++i) {
    // p[max] == 1. Weights below e^-87 of the max count as zero (see Candidate::weight).
    if (keep[i] && p[i] >= f.min_p && p[i] >= std::exp(-87.0)) ids.push_back(i);
  }
  return ids;
}

TEST(SelectCandidatesTest, MatchesFullSortReferenceOnRandomRows) {
  std::mt19937_64 rng(1234);
  std::normal_distribution<float> normal(0.0f, 3.0f);  // test data only; portability irrelevant
  for (int trial = 0; trial < 1000; ++trial) {
    const int vocab = 1 + static_cast<int>(rng() % 3000);
    std::vector<float> logits(vocab);
    for (float& l : logits) l = normal(rng);
    const CandidateFilter filter{
        .temperature = std::vector<float>{0.3f, 0.7f, 1.0f, 1.5f}[rng() % 4],
        .top_k = std::vector<int>{0, 1, 5, 40, 2000, -1}[rng() % 6],
        .top_p = std::vector<float>{1.0f, 0.95f, 0.8f, 0.3f, 0.01f}[rng() % 5],
        .min_p = std::vector<float>{0.0f, 0.0f, 0.02f, 0.3f}[rng() % 4],
    };
    ASSERT_EQ(Select(logits, filter), ReferenceSelect(logits, filter))
        << "trial " << trial << " vocab " << vocab << " top_k " << filter.top_k << " top_p "
        << filter.top_p << " min_p " << filter.min_p << " T " << filter.temperature;
  }
}

TEST(SelectCandidatesTest, SurvivorsComeInIdOrder) {
  // Draws walk the survivors in id order (the device sampler's order too), whichever filter cut
  // them: top-p's partial sort must not leave its order behind.
  std::mt19937_64 rng(99);
  std::normal_distribution<float> normal(0.0f, 2.0f);
  for (int trial = 0; trial < 200; ++trial) {
    std::vector<float> logits(1 + static_cast<int>(rng() % 5000));
    for (float& l : logits) l = normal(rng);
    const CandidateFilter filter{.temperature = 0.8f,
                                 .top_k = trial % 2 == 0 ? 0 : 300,
                                 .top_p = std::vector<float>{1.0f, 0.9f, 0.5f}[trial % 3],
                                 .min_p = trial % 5 == 0 ? 0.05f : 0.0f};
    std::vector<Candidate> out;
    SelectCandidates(logits, filter, &out);
    ASSERT_TRUE(std::is_sorted(out.begin(), out.end(),
                               [](const Candidate& a, const Candidate& b) { return a.id < b.id; }))
        << "trial " << trial;
  }
}

TEST(CollectPenaltyTokensTest, DistinctTokensWithOutputCounts) {
  const std::vector<int32_t> prompt = {5, 3, 5, 9};
  const std::vector<int32_t> output = {3, 7, 3, 7, 7};
  std::vector<std::pair<int32_t, int32_t>> got;
  for (const PenaltyToken& t : CollectPenaltyTokens(prompt, output, true)) {
    got.emplace_back(t.token, t.output_count);
  }
  EXPECT_THAT(got, ElementsAre(std::pair{5, 0}, std::pair{3, 2}, std::pair{9, 0}, std::pair{7, 3}));
  got.clear();
  for (const PenaltyToken& t : CollectPenaltyTokens(prompt, output, false)) {
    got.emplace_back(t.token, t.output_count);
  }
  EXPECT_THAT(got, ElementsAre(std::pair{3, 2}, std::pair{7, 3}));
}

TEST(SampleCandidateTest, ProportionalToWeights) {
  const std::vector<Candidate> c = {{0.0f, 7, 1.0f}, {0.0f, 3, 3.0f}};
  EXPECT_EQ(SampleCandidate(c, 0.0), 7);
  EXPECT_EQ(SampleCandidate(c, 0.24), 7);
  EXPECT_EQ(SampleCandidate(c, 0.26), 3);
  EXPECT_EQ(SampleCandidate(c, std::nextafter(1.0, 0.0)), 3);
  EXPECT_EQ(SampleCandidate({}, 0.5), 0);
}

TEST(UniformFromBitsTest, CoversHalfOpenUnitInterval) {
  EXPECT_EQ(UniformFromBits(0), 0.0);
  EXPECT_LT(UniformFromBits(~uint64_t{0}), 1.0);
  EXPECT_EQ(UniformFromBits(uint64_t{1} << 63), 0.5);
}

TEST(ComputeLogprobsTest, NormalizedSortedAndTiesById) {
  std::vector<float> raw = {1.0f, 3.0f, 3.0f, -2.0f, 0.5f, -kInf};
  SampleResult r;
  ComputeLogprobs(raw, 4, 4, &r);
  double lse = 0.0;
  for (float l : raw) lse += std::exp(static_cast<double>(l));
  lse = std::log(lse);
  EXPECT_NEAR(r.logprob, 0.5 - lse, 1e-6);
  ASSERT_EQ(r.top.size(), 4u);
  EXPECT_EQ(r.top[0].token, 1);
  EXPECT_EQ(r.top[1].token, 2);
  EXPECT_EQ(r.top[2].token, 0);
  EXPECT_EQ(r.top[3].token, 4);
  for (const TokenLogprob& t : r.top) EXPECT_NEAR(t.logprob, raw[t.token] - lse, 1e-6);

  // All of them: descending, and they sum to one.
  ComputeLogprobs(raw, 0, 20, &r);
  ASSERT_EQ(r.top.size(), raw.size());
  double total = 0.0;
  for (size_t i = 0; i < r.top.size(); ++i) {
    total += std::exp(r.top[i].logprob);
    if (i > 0) {
      EXPECT_GE(r.top[i - 1].logprob, r.top[i].logprob);
    }
  }
  EXPECT_NEAR(total, 1.0, 1e-6);
  EXPECT_EQ(r.top.back().token, 5);
  EXPECT_EQ(r.top.back().logprob, -kInf);

  ComputeLogprobs(raw, 1, 0, &r);
  EXPECT_THAT(r.top, IsEmpty());
}

TEST(ComputeLogprobsTest, NonFiniteRows) {
  SampleResult r;
  ComputeLogprobs(std::vector<float>{kInf, 0.0f, kInf, kInf}, 2, 2, &r);
  EXPECT_NEAR(r.logprob, -std::log(3.0), 1e-6);
  ASSERT_EQ(r.top.size(), 2u);
  EXPECT_EQ(r.top[0].token, 0);
  EXPECT_EQ(r.top[1].token, 2);
  ComputeLogprobs(std::vector<float>{kInf, 0.0f}, 1, 0, &r);
  EXPECT_EQ(r.logprob, -kInf);

  ComputeLogprobs(std::vector<float>{-kInf, -kInf}, 0, 1, &r);
  EXPECT_EQ(r.logprob, -kInf);
  ASSERT_EQ(r.top.size(), 1u);
  EXPECT_EQ(r.top[0].token, 0);
}

}  // namespace
}  // namespace sals
