#include "engine/sampling/sampler.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <numeric>
#include <random>
#include <set>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "engine/sampling/logits_processors.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace sals {
namespace {

using ::testing::ElementsAre;
using ::testing::IsEmpty;

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

SamplingParams Params(float temperature) {
  SamplingParams p;
  p.temperature = temperature;
  return p;
}

// Draws `n` tokens from fresh copies of the same logits row.
std::vector<int32_t> Draw(SequenceSampler& sampler, const std::vector<float>& logits, int n) {
  std::vector<int32_t> tokens;
  for (int i = 0; i < n; ++i) {
    std::vector<float> row = logits;
    tokens.push_back(sampler.Sample(row, {}, {}).token);
  }
  return tokens;
}

std::vector<double> Softmax(const std::vector<float>& logits, double temperature) {
  const double max = *std::max_element(logits.begin(), logits.end());
  std::vector<double> p;
  double sum = 0.0;
  for (float l : logits) sum += p.emplace_back(std::exp((l - max) / temperature));
  for (double& x : p) x /= sum;
  return p;
}

// Pearson chi-square of the observed counts against `expected` probabilities.
double ChiSquare(const std::vector<int32_t>& tokens, const std::vector<double>& expected) {
  std::vector<double> counts(expected.size(), 0.0);
  for (int32_t t : tokens) counts.at(t) += 1.0;
  double chi2 = 0.0;
  for (size_t i = 0; i < expected.size(); ++i) {
    const double e = expected[i] * static_cast<double>(tokens.size());
    if (e == 0.0) {
      EXPECT_EQ(counts[i], 0.0) << "token " << i << " has zero probability";
      continue;
    }
    chi2 += (counts[i] - e) * (counts[i] - e) / e;
  }
  return chi2;
}

// ---- Greedy -------------------------------------------------------------------------------

TEST(SamplerGreedyTest, PicksArgmaxAndLowestIdOnTies) {
  SequenceSampler sampler(Params(0.0f), 1);
  std::vector<float> logits = {0.1f, 2.0f, -1.0f, 1.9f};
  EXPECT_EQ(sampler.Sample(logits, {}, {}).token, 1);
  std::vector<float> ties = {0.1f, 2.0f, 2.0f, 2.0f};
  EXPECT_EQ(sampler.Sample(ties, {}, {}).token, 1);
  std::vector<float> all_equal(7, 0.0f);
  EXPECT_EQ(sampler.Sample(all_equal, {}, {}).token, 0);
}

TEST(SamplerGreedyTest, IgnoresFiltersAndSeed) {
  SamplingParams p = Params(0.0f);
  p.top_k = 1;
  p.top_p = 0.1f;
  p.min_p = 0.9f;
  for (uint64_t seed : {1u, 2u, 3u}) {
    p.seed = seed;
    SequenceSampler sampler(p, 0);
    EXPECT_THAT(Draw(sampler, {0.0f, 1.0f, 3.0f, 2.0f}, 5), ElementsAre(2, 2, 2, 2, 2));
  }
}

// ---- Penalties through Sample (order: repetition, then frequency/presence) ------------------

TEST(SamplerPenaltyTest, AppliedInVllmOrderAndLeftInPlace) {
  SamplingParams p = Params(0.0f);
  p.repetition_penalty = 1.5f;
  p.frequency_penalty = 0.5f;
  p.presence_penalty = 0.5f;
  SequenceSampler sampler(p, 1);
  std::vector<float> logits = {3.0f, 0.0f, -1.0f, 0.7f};
  const std::vector<int32_t> prompt = {2, 2};
  const std::vector<int32_t> output = {0, 0};
  const SampleResult r = sampler.Sample(logits, prompt, output);
  // 0: 3 / 1.5 - 0.5 * 2 - 0.5 = 0.5 (the reverse order would give 1); 2: -1 * 1.5 (prompt
  // only: no frequency/presence).
  EXPECT_THAT(logits, ElementsAre(0.5f, 0.0f, -1.5f, 0.7f));
  EXPECT_EQ(r.token, 3);
}

TEST(SamplerPenaltyTest, RepetitionPenaltyChangesGreedyChoice) {
  SamplingParams p = Params(0.0f);
  p.repetition_penalty = 2.0f;
  SequenceSampler sampler(p, 1);
  std::vector<float> logits = {4.0f, 3.0f};
  const std::vector<int32_t> output = {0};
  EXPECT_EQ(sampler.Sample(logits, {}, output).token, 1);  // 4 / 2 = 2 < 3
}

// ---- Temperature and filters: distributions -------------------------------------------------

TEST(SamplerDistributionTest, TemperatureMatchesSoftmax) {
  const std::vector<float> logits = {1.0f, 0.5f, 0.0f, -0.5f, -1.0f};
  for (float temperature : {0.7f, 1.0f, 2.0f}) {
    SamplingParams p = Params(temperature);
    p.seed = 42;
    SequenceSampler sampler(p, 0);
    const std::vector<int32_t> tokens = Draw(sampler, logits, 20000);
    // 4 degrees of freedom; 18.47 is the 0.999 quantile. Seeded, so the test is deterministic.
    EXPECT_LT(ChiSquare(tokens, Softmax(logits, temperature)), 18.47) << "T=" << temperature;
  }
}

TEST(SamplerDistributionTest, FiltersRenormalizeOverSurvivors) {
  const std::vector<float> logits = {2.0f, 1.5f, 1.0f, 0.0f, -1.0f, -3.0f};
  struct Case {
    int top_k;
    float top_p;
    float min_p;
    std::vector<int32_t> kept;
  };
  // Softmax at T=1: .46 .28 .17 .06 .02 .003 (ratios to max 1 .61 .37 .14 .05 .007).
  const std::vector<Case> cases = {
      {3, 1.0f, 0.0f, {0, 1, 2}},            // top-k
      {0, 0.8f, 0.0f, {0, 1, 2}},            // .45 + .27 = .72 < .8, then .89
      {0, 0.7f, 0.0f, {0, 1}},               // .45 < .7, .72 >= .7
      {0, 1.0f, 0.1f, {0, 1, 2, 3}},         // ratio .14 >= .1 > .05
      {4, 0.9f, 0.0f, {0, 1, 2}},            // over the top-4 mass (.97): .91/.97 = .94 >= .9
      {5, 0.95f, 0.2f, {0, 1, 2}},           // top-p keeps 4, min-p drops the 4th
      {10, 1.0f, 0.0f, {0, 1, 2, 3, 4, 5}},  // top-k larger than the vocab
      {0, 1.0f, 1.0f, {0}},                  // min_p = 1: argmax only
  };
  for (const Case& c : cases) {
    SamplingParams p = Params(1.0f);
    p.top_k = c.top_k;
    p.top_p = c.top_p;
    p.min_p = c.min_p;
    SequenceSampler sampler(p, 7);
    const std::vector<int32_t> tokens = Draw(sampler, logits, 20000);
    std::vector<double> expected(logits.size(), 0.0);
    double mass = 0.0;
    const std::vector<double> full = Softmax(logits, 1.0);
    for (int32_t t : c.kept) mass += full[t];
    for (int32_t t : c.kept) expected[t] = full[t] / mass;
    const std::set<int32_t> seen(tokens.begin(), tokens.end());
    EXPECT_EQ(std::vector<int32_t>(seen.begin(), seen.end()), c.kept)
        << "top_k " << c.top_k << " top_p " << c.top_p << " min_p " << c.min_p;
    // 0.999 quantile for up to 5 degrees of freedom.
    EXPECT_LT(ChiSquare(tokens, expected), 20.52)
        << "top_k " << c.top_k << " top_p " << c.top_p << " min_p " << c.min_p;
  }
}

// Plain temperature sampling over a vocab spanning several 4096-token blocks (the dense path
// walks block sums first).
TEST(SamplerDistributionTest, DenseSamplingAcrossBlocks) {
  constexpr int kVocab = 3 * 4096 + 100;
  std::vector<float> sparse(kVocab, -kInf);
  const std::vector<int32_t> ids = {5, 4100, 8200, 12300};
  const std::vector<float> values = {0.0f, 1.0f, 0.5f, -0.5f};
  for (size_t i = 0; i < ids.size(); ++i) sparse[ids[i]] = values[i];
  SamplingParams p = Params(0.8f);
  p.seed = 17;
  SequenceSampler sampler(p, 0);
  std::vector<int32_t> tokens;
  for (int32_t t : Draw(sampler, sparse, 20000)) {
    const auto it = std::find(ids.begin(), ids.end(), t);
    ASSERT_NE(it, ids.end()) << t;
    tokens.push_back(static_cast<int32_t>(it - ids.begin()));
  }
  EXPECT_LT(ChiSquare(tokens, Softmax(values, 0.8)), 16.27);  // 3 dof, 0.999 quantile

  // Uniform over the whole vocab: draws per block follow the block sizes.
  SequenceSampler uniform(p, 0);
  std::vector<int32_t> blocks;
  for (int32_t t : Draw(uniform, std::vector<float>(kVocab, 0.0f), 20000)) {
    blocks.push_back(t / 4096);
  }
  const double n = kVocab;
  EXPECT_LT(ChiSquare(blocks, {4096 / n, 4096 / n, 4096 / n, 100 / n}), 16.27);
}

TEST(SamplerDistributionTest, LargeVocabNeverSamplesFilteredTokens) {
  constexpr int kVocab = 128256;
  std::mt19937_64 rng(99);
  std::normal_distribution<float> normal(0.0f, 2.5f);  // test data only
  std::vector<float> logits(kVocab);
  for (float& l : logits) l = normal(rng);
  std::vector<int32_t> order(kVocab);
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
  });
  const std::vector<double> probs = Softmax(logits, 0.8);

  // Allowed sets by brute force: top-50; the top-0.9 prefix; ratio to max >= 0.05.
  std::set<int32_t> top_k(order.begin(), order.begin() + 50);
  std::set<int32_t> top_p;
  double ahead = 0.0;
  for (int32_t t : order) {
    if (ahead >= 0.9) break;
    top_p.insert(t);
    ahead += probs[t];
  }
  std::set<int32_t> min_p;
  for (int32_t t = 0; t < kVocab; ++t) {
    if (probs[t] >= 0.05 * probs[order[0]]) min_p.insert(t);
  }
  ASSERT_GT(top_p.size(), 1000u);  // a wide nucleus: exercises the chunked partial sort
  ASSERT_GT(min_p.size(), 1u);

  for (auto [allowed, setter] :
       std::vector<std::pair<const std::set<int32_t>*, void (*)(SamplingParams&)>>{
           {&top_k, [](SamplingParams& p) { p.top_k = 50; }},
           {&top_p, [](SamplingParams& p) { p.top_p = 0.9f; }},
           {&min_p, [](SamplingParams& p) { p.min_p = 0.05f; }},
       }) {
    SamplingParams p = Params(0.8f);
    setter(p);
    SequenceSampler sampler(p, 3);
    for (int32_t t : Draw(sampler, logits, 300)) EXPECT_TRUE(allowed->count(t)) << t;
  }
}

// ---- Reproducibility ------------------------------------------------------------------------

TEST(SamplerSeedTest, SameSeedSameTokensDifferentSeedsDiffer) {
  const std::vector<float> logits(100, 0.0f);  // uniform: 100^-200 chance of a false match
  auto run = [&](std::optional<uint64_t> seed, uint64_t fallback) {
    SamplingParams p = Params(1.0f);
    p.seed = seed;
    SequenceSampler sampler(p, fallback);
    return Draw(sampler, logits, 200);
  };
  EXPECT_EQ(run(5, 1), run(5, 1));
  EXPECT_EQ(run(5, 1), run(5, 2));  // an explicit seed wins over the fallback
  EXPECT_NE(run(5, 1), run(6, 1));
  EXPECT_EQ(run(std::nullopt, 9), run(std::nullopt, 9));
  EXPECT_NE(run(std::nullopt, 9), run(std::nullopt, 10));
  EXPECT_EQ(run(std::nullopt, 5), run(5, 123));  // the fallback seeds the same generator
}

TEST(SamplerSeedTest, IndependentOfOtherSequencesInTheBatch) {
  const std::vector<float> logits = {0.3f, 0.1f, 0.0f, -0.2f, 0.5f, 0.4f};
  SamplingParams p = Params(1.0f);
  p.seed = 11;
  SequenceSampler alone(p, 0);
  const std::vector<int32_t> expected = Draw(alone, logits, 50);

  SequenceSampler seeded(p, 0);
  SequenceSampler other(Params(0.9f), 77);
  std::vector<int32_t> interleaved;
  for (int i = 0; i < 50; ++i) {
    Draw(other, logits, 3);
    interleaved.push_back(Draw(seeded, logits, 1)[0]);
  }
  EXPECT_EQ(interleaved, expected);
}

// Pins the exact draw procedure (mt19937_64 + top 53 bits + cumulative walk in id order), which
// the standard fixes on every platform; a change here silently changes seeded outputs.
TEST(SamplerSeedTest, GoldenSequence) {
  SamplingParams p = Params(1.0f);
  p.seed = 2024;
  SequenceSampler sampler(p, 0);
  const std::vector<float> logits(10, 0.0f);
  std::vector<int32_t> expected;
  std::mt19937_64 reference(2024);
  for (int i = 0; i < 20; ++i) {
    // Uniform over 10 equal weights: token = floor(u * 10).
    expected.push_back(
        static_cast<int32_t>(static_cast<double>(reference() >> 11) * 0x1.0p-53 * 10));
  }
  EXPECT_EQ(Draw(sampler, logits, 20), expected);
  // The standard's required 10000th output of a default-seeded mt19937_64.
  std::mt19937_64 standard;
  standard.discard(9999);
  EXPECT_EQ(standard(), 9981545732273789042ull);
}

// ---- Prepare + SampleRow (what a backend executes) -------------------------------------------

TEST(SamplerPrepareTest, SampleRowOfPrepareIsSampleAlongAGrowingSequence) {
  // Two samplers with one seed: one samples directly, the other through Prepare + SampleRow, as
  // the engine does, over a sequence that grows by its own tokens (the incremental penalty list)
  // and is once handed a copy of itself (a rebuild).
  SamplingParams p = Params(0.9f);
  p.seed = 7;
  p.top_k = 20;
  p.top_p = 0.9f;
  p.repetition_penalty = 1.3f;
  p.frequency_penalty = 0.4f;
  p.presence_penalty = 0.2f;
  p.logprobs = 3;
  SequenceSampler direct(p, 0), prepared(p, 0);
  std::mt19937_64 rng(3);
  std::normal_distribution<float> normal(0.0f, 2.0f);
  std::vector<int32_t> tokens = {1, 2, 3, 2, 40};
  const size_t prompt_len = tokens.size();
  for (int step = 0; step < 60; ++step) {
    std::vector<float> logits(64);
    for (float& l : logits) l = normal(rng);
    std::vector<float> copy = logits;
    std::vector<int32_t> snapshot = tokens;  // a different buffer every step for `direct`
    const std::span<const int32_t> all(step == 30 ? snapshot : tokens);
    const SampleResult a =
        direct.Sample(logits, std::span<const int32_t>(snapshot).first(prompt_len),
                      std::span<const int32_t>(snapshot).subspan(prompt_len));
    const RowSampling row = prepared.Prepare(all.first(prompt_len), all.subspan(prompt_len));
    const SampleResult b = SampleRow(copy, row);
    ASSERT_EQ(a.token, b.token) << "step " << step;
    ASSERT_EQ(a.logprob, b.logprob) << "step " << step;
    ASSERT_EQ(logits, copy) << "step " << step;
    std::vector<PenaltyToken> expected = CollectPenaltyTokens(
        all.first(prompt_len), all.subspan(prompt_len), /*include_prompt=*/true);
    auto key = [](const PenaltyToken& t) { return std::pair{t.token, t.output_count}; };
    std::vector<std::pair<int32_t, int32_t>> want, got;
    for (const PenaltyToken& t : expected) want.push_back(key(t));
    for (const PenaltyToken& t : row.penalties) got.push_back(key(t));
    std::sort(want.begin(), want.end());
    std::sort(got.begin(), got.end());
    ASSERT_EQ(got, want) << "step " << step;
    tokens.push_back(a.token);
  }
}

TEST(SamplerPrepareTest, GreedyConsumesNoDrawAndNoPenaltiesMeansEmptyList) {
  SequenceSampler greedy(Params(0.0f), 5);
  const std::vector<int32_t> prompt = {1, 2};
  const RowSampling row = greedy.Prepare(prompt, {});
  EXPECT_EQ(row.temperature, 0.0f);
  EXPECT_EQ(row.uniform, 0.0);
  EXPECT_TRUE(row.penalties.empty());
  SamplingParams p = Params(1.0f);
  p.seed = 11;
  SequenceSampler sampled(p, 0);
  std::mt19937_64 reference(11);
  EXPECT_EQ(sampled.Prepare(prompt, {}).uniform, UniformFromBits(reference()));
}

// ---- Logprobs -------------------------------------------------------------------------------

TEST(SamplerLogprobsTest, RawModelLogprobsNotProcessed) {
  SamplingParams p = Params(0.5f);
  p.repetition_penalty = 4.0f;
  p.top_k = 1;
  p.logprobs = 2;
  SequenceSampler sampler(p, 1);
  const std::vector<float> raw = {2.0f, 1.0f, 0.0f, -1.0f};
  std::vector<float> logits = raw;
  const std::vector<int32_t> prompt = {0};
  const SampleResult r = sampler.Sample(logits, prompt, {});
  EXPECT_EQ(r.token, 1);                                      // token 0 penalized to 0.5, top_k = 1
  EXPECT_THAT(logits, ElementsAre(0.5f, 1.0f, 0.0f, -1.0f));  // penalized, not / temperature

  double lse = 0.0;
  for (float l : raw) lse += std::exp(static_cast<double>(l));
  lse = std::log(lse);
  // Under the processed distribution the chosen token would have logprob 0 (top_k = 1).
  EXPECT_NEAR(r.logprob, 1.0 - lse, 1e-6);
  ASSERT_EQ(r.top.size(), 2u);
  EXPECT_EQ(r.top[0].token, 0);
  EXPECT_NEAR(r.top[0].logprob, 2.0 - lse, 1e-6);
  EXPECT_EQ(r.top[1].token, 1);
  EXPECT_NEAR(r.top[1].logprob, 1.0 - lse, 1e-6);
}

TEST(SamplerLogprobsTest, FullListSumsToOneDescending) {
  std::mt19937_64 rng(5);
  std::vector<float> logits(20);
  for (float& l : logits) l = static_cast<float>(rng() % 1000) / 100.0f - 5.0f;
  SamplingParams p = Params(0.0f);
  p.logprobs = kMaxLogprobs;
  SequenceSampler sampler(p, 1);
  std::vector<float> row = logits;
  const SampleResult r = sampler.Sample(row, {}, {});
  ASSERT_EQ(r.top.size(), 20u);
  double total = 0.0;
  for (size_t i = 0; i < r.top.size(); ++i) {
    total += std::exp(r.top[i].logprob);
    if (i > 0) {
      EXPECT_TRUE(
          r.top[i - 1].logprob > r.top[i].logprob ||
          (r.top[i - 1].logprob == r.top[i].logprob && r.top[i - 1].token < r.top[i].token));
    }
  }
  EXPECT_NEAR(total, 1.0, 1e-5);
  EXPECT_EQ(r.top[0].token, r.token);  // greedy picks the most likely
  EXPECT_EQ(r.top[0].logprob, r.logprob);
}

TEST(SamplerLogprobsTest, ZeroMeansChosenOnlyUnsetMeansNone) {
  std::vector<float> logits = {0.0f, 0.0f};
  SamplingParams p = Params(0.0f);
  p.logprobs = 0;
  SampleResult r = SequenceSampler(p, 1).Sample(logits, {}, {});
  EXPECT_NEAR(r.logprob, std::log(0.5), 1e-6);
  EXPECT_THAT(r.top, IsEmpty());

  p.logprobs.reset();
  r = SequenceSampler(p, 1).Sample(logits, {}, {});
  EXPECT_EQ(r.logprob, 0.0f);
  EXPECT_THAT(r.top, IsEmpty());
}

// ---- Validation ------------------------------------------------------------------------------

std::string Message(void (*set)(SamplingParams&)) {
  SamplingParams p;
  set(p);
  const absl::Status s = ValidateSamplingParams(p);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  return std::string(s.message());
}

TEST(ValidateSamplingParamsTest, AcceptsDefaultsAndBoundaries) {
  EXPECT_TRUE(ValidateSamplingParams(SamplingParams{}).ok());
  SamplingParams p;
  p.temperature = 0.0f;
  p.top_k = -1;
  p.top_p = 1.0f;
  p.min_p = 1.0f;
  p.repetition_penalty = 1e-3f;
  p.frequency_penalty = -2.0f;
  p.presence_penalty = 2.0f;
  p.logprobs = 20;
  EXPECT_TRUE(ValidateSamplingParams(p).ok());
  p.top_k = 0;
  p.min_p = 0.0f;
  p.top_p = 1e-6f;
  p.logprobs = 0;
  p.temperature = 100.0f;
  EXPECT_TRUE(ValidateSamplingParams(p).ok());
}

TEST(ValidateSamplingParamsTest, MessagesNameTheField) {
  EXPECT_EQ(Message([](SamplingParams& p) { p.temperature = -1.0f; }),
            "temperature must be non-negative, got -1");
  EXPECT_EQ(Message([](SamplingParams& p) { p.temperature = kNaN; }),
            "temperature must be a finite number, got nan");
  EXPECT_EQ(Message([](SamplingParams& p) { p.temperature = kInf; }),
            "temperature must be a finite number, got inf");
  EXPECT_EQ(Message([](SamplingParams& p) { p.top_k = -2; }),
            "top_k must be -1 or 0 (disabled), or at least 1, got -2");
  EXPECT_EQ(Message([](SamplingParams& p) { p.top_p = 1.5f; }), "top_p must be in (0, 1], got 1.5");
  EXPECT_EQ(Message([](SamplingParams& p) { p.top_p = 0.0f; }), "top_p must be in (0, 1], got 0");
  EXPECT_EQ(Message([](SamplingParams& p) { p.top_p = kNaN; }), "top_p must be in (0, 1], got nan");
  EXPECT_EQ(Message([](SamplingParams& p) { p.min_p = -0.1f; }),
            "min_p must be in [0, 1], got -0.1");
  EXPECT_EQ(Message([](SamplingParams& p) { p.min_p = 1.5f; }), "min_p must be in [0, 1], got 1.5");
  EXPECT_EQ(Message([](SamplingParams& p) { p.repetition_penalty = 0.0f; }),
            "repetition_penalty must be greater than zero, got 0");
  EXPECT_EQ(Message([](SamplingParams& p) { p.repetition_penalty = kInf; }),
            "repetition_penalty must be a finite number, got inf");
  EXPECT_EQ(Message([](SamplingParams& p) { p.frequency_penalty = 2.5f; }),
            "frequency_penalty must be in [-2, 2], got 2.5");
  EXPECT_EQ(Message([](SamplingParams& p) { p.presence_penalty = -3.0f; }),
            "presence_penalty must be in [-2, 2], got -3");
  EXPECT_EQ(Message([](SamplingParams& p) { p.presence_penalty = kNaN; }),
            "presence_penalty must be in [-2, 2], got nan");
  EXPECT_EQ(Message([](SamplingParams& p) { p.logprobs = 21; }),
            "logprobs must be in [0, 20], got 21");
  EXPECT_EQ(Message([](SamplingParams& p) { p.logprobs = -1; }),
            "logprobs must be in [0, 20], got -1");
}

TEST(SequenceSamplerTest, TinyTemperatureRaisedLikeVllm) {
  EXPECT_EQ(SequenceSampler(Params(1e-4f), 0).params().temperature, kMinTemperature);
  EXPECT_EQ(SequenceSampler(Params(0.0f), 0).params().temperature, 0.0f);
  EXPECT_EQ(SequenceSampler(Params(0.5f), 0).params().temperature, 0.5f);
}

// ---- Non-finite logits ----------------------------------------------------------------------

TEST(SamplerRobustnessTest, AllNanOrNegativeInfinityGivesTokenZero) {
  for (float bad : {kNaN, -kInf}) {
    for (float temperature : {0.0f, 1.0f}) {
      SamplingParams p = Params(temperature);
      p.top_k = 2;
      p.top_p = 0.5f;
      p.min_p = 0.5f;
      p.repetition_penalty = 1.3f;
      p.frequency_penalty = 1.0f;
      p.logprobs = 3;
      SequenceSampler sampler(p, 1);
      std::vector<float> logits(8, bad);
      const std::vector<int32_t> output = {1, 1, 2};
      const SampleResult r = sampler.Sample(logits, output, output);
      EXPECT_EQ(r.token, 0);
      EXPECT_EQ(r.logprob, -kInf);
      EXPECT_EQ(r.top.size(), 3u);
    }
  }
}

TEST(SamplerRobustnessTest, NanTokensAreNeverChosen) {
  const std::vector<float> logits = {kNaN, 0.2f, kNaN, 0.1f, kNaN};
  for (float temperature : {0.0f, 1.0f, 5.0f}) {
    SamplingParams p = Params(temperature);
    p.logprobs = 5;
    SequenceSampler sampler(p, 3);
    for (int i = 0; i < 500; ++i) {
      std::vector<float> row = logits;
      const SampleResult r = sampler.Sample(row, {}, {});
      ASSERT_TRUE(r.token == 1 || r.token == 3) << r.token;
      ASSERT_TRUE(std::isfinite(r.logprob));
      ASSERT_EQ(r.top.size(), 5u);
      EXPECT_EQ(r.top[0].token, 1);
      EXPECT_EQ(r.top[4].logprob, -kInf);
    }
  }
}

TEST(SamplerRobustnessTest, PositiveInfinityAndHugeLogits) {
  SamplingParams p = Params(1.0f);
  p.logprobs = 1;
  SequenceSampler sampler(p, 3);
  std::vector<float> logits = {0.0f, kInf, 1.0f};
  SampleResult r = sampler.Sample(logits, {}, {});
  EXPECT_EQ(r.token, 1);
  EXPECT_EQ(r.logprob, 0.0f);

  // Huge finite logits at the lowest temperature: no overflow to NaN, no out-of-range id.
  SequenceSampler cold(Params(kMinTemperature), 3);
  for (int i = 0; i < 50; ++i) {
    std::vector<float> huge = {3e38f, -3e38f, 3e38f, 1e30f};
    const int32_t t = cold.Sample(huge, {}, {}).token;
    EXPECT_TRUE(t == 0 || t == 2) << t;
  }
}

TEST(SamplerRobustnessTest, OutOfRangePenaltyIdsAndEmptyRow) {
  SamplingParams p = Params(1.0f);
  p.repetition_penalty = 2.0f;
  p.frequency_penalty = 1.0f;
  SequenceSampler sampler(p, 3);
  std::vector<float> logits = {1.0f, 2.0f};
  const std::vector<int32_t> bad = {-1, 2, 1 << 30};
  const int32_t t = sampler.Sample(logits, bad, bad).token;
  EXPECT_TRUE(t == 0 || t == 1);
  EXPECT_THAT(logits, ElementsAre(1.0f, 2.0f));
  EXPECT_EQ(sampler.Sample({}, {}, {}).token, 0);
}

}  // namespace
}  // namespace sals
