// Device tests of the sampling kernels against the host sampler (engine/sampling), the reference
// they follow: for the same rows, parameters and uniform draws, the same tokens, the same
// penalized logits and the same logprobs.
#include "sals/kernels/sampling.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <tuple>
#include <type_traits>
#include <vector>

#include "engine/backend/cuda/device_sampling.h"
#include "engine/sampling/logits_processors.h"
#include "engine/sampling/sampler.h"
#include "tests/gpu/test_util.h"

namespace sals::kernels::gpu_test {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

// A random row: normal logits at a random scale, sometimes quantized (many exact ties), with a
// few -inf, NaN, and rarely +inf entries.
std::vector<float> RandomRow(std::mt19937_64& rng, int vocab) {
  std::normal_distribution<float> normal(0.0f, std::vector<float>{0.5f, 2.0f, 6.0f}[rng() % 3]);
  const bool quantized = rng() % 4 == 0;
  std::vector<float> row(vocab);
  for (float& l : row) {
    l = normal(rng);
    if (quantized) l = std::round(l * 2.0f) / 2.0f;
  }
  std::uniform_int_distribution<int> any(0, vocab - 1);
  if (rng() % 3 == 0) {
    for (int i = 0; i < 1 + vocab / 50; ++i) row[any(rng)] = -kInf;
    row[any(rng)] = std::numeric_limits<float>::quiet_NaN();
  }
  if (rng() % 40 == 0) row[any(rng)] = kInf;
  return row;
}

RowSampling RandomSampling(std::mt19937_64& rng, int vocab) {
  RowSampling s;
  auto pick = [&](auto... v) {
    const std::vector<std::common_type_t<decltype(v)...>> options = {v...};
    return options[rng() % options.size()];
  };
  s.temperature = pick(0.0f, 0.01f, 0.7f, 1.0f, 1.0f, 1.0f, 1.8f);
  s.top_k = pick(0, 0, 0, 1, 5, 50, 1000, vocab, vocab + 3);
  s.top_p = pick(1.0f, 1.0f, 0.95f, 0.8f, 0.5f, 0.05f);
  s.min_p = pick(0.0f, 0.0f, 0.0f, 0.02f, 0.3f, 1.0f);
  s.repetition_penalty = pick(1.0f, 1.0f, 1.2f, 0.8f);
  s.frequency_penalty = pick(0.0f, 0.0f, 0.5f, -0.7f);
  s.presence_penalty = pick(0.0f, 0.0f, 0.3f);
  s.uniform = std::uniform_real_distribution<double>(0.0, 1.0)(rng);
  if (rng() % 2 == 0) s.logprobs = pick(0, 1, 5, 20);
  const bool penalized =
      s.repetition_penalty != 1.0f || s.frequency_penalty != 0.0f || s.presence_penalty != 0.0f;
  if (penalized) {
    // A prompt and an output drawn from a small range (repeats) plus a few ids out of vocab.
    std::uniform_int_distribution<int32_t> id(-2, std::min(vocab + 1, 300));
    std::vector<int32_t> prompt(rng() % 200), output(rng() % 100);
    for (int32_t& t : prompt) t = id(rng);
    for (int32_t& t : output) t = id(rng);
    s.penalties = CollectPenaltyTokens(prompt, output, s.repetition_penalty != 1.0f);
  }
  return s;
}

// Runs SampleRows over `rows` (rows x vocab) with one RowSampling per row (row i samples row i,
// in reverse order of the params, to exercise `row`), then checks each against SampleRow.
void CheckAgainstHost(const std::vector<float>& logits, int vocab,
                      const std::vector<RowSampling>& samplings) {
  const int rows = static_cast<int>(samplings.size());
  std::vector<SampleRowParams> params;
  std::vector<PenaltyEntry> penalties;
  for (int i = rows - 1; i >= 0; --i) AppendSampleRow(samplings[i], i, &params, &penalties);
  auto d_logits = ToDevice(logits);
  auto d_params = ToDevice(params);
  auto d_penalties = ValueOrDie(DeviceBuffer<PenaltyEntry>::Allocate(penalties.size()));
  if (!penalties.empty()) {
    SALS_CUDA_CHECK(cudaMemcpy(d_penalties.get(), penalties.data(),
                               penalties.size() * sizeof(PenaltyEntry), cudaMemcpyHostToDevice));
  }
  const size_t ws_bytes = SampleRowsWorkspaceBytes(rows, static_cast<int64_t>(penalties.size()));
  auto d_ws = ValueOrDie(DeviceBuffer<uint8_t>::Allocate(ws_bytes));
  auto d_results = ValueOrDie(DeviceBuffer<SampleRowResult>::Allocate(rows));
  SALS_ASSERT_OK(SampleRows(d_logits.get(), vocab, d_params.get(), rows, d_penalties.get(),
                            static_cast<int64_t>(penalties.size()), d_ws.get(), ws_bytes,
                            d_results.get(), nullptr));
  const std::vector<SampleRowResult> results = ToHost(d_results);
  const std::vector<float> penalized = ToHost(d_logits);

  for (int k = 0; k < rows; ++k) {
    const int r = params[k].row;
    const RowSampling& s = samplings[r];
    SCOPED_TRACE(::testing::Message()
                 << "vocab " << vocab << " row " << r << " T " << s.temperature << " top_k "
                 << s.top_k << " top_p " << s.top_p << " min_p " << s.min_p << " rep "
                 << s.repetition_penalty << " freq " << s.frequency_penalty << " pres "
                 << s.presence_penalty << " u " << s.uniform << " penalties " << s.penalties.size()
                 << " logprobs " << (s.logprobs ? *s.logprobs : -1));
    std::vector<float> host(logits.begin() + static_cast<int64_t>(r) * vocab,
                            logits.begin() + static_cast<int64_t>(r + 1) * vocab);
    const SampleResult want = SampleRow(host, s);
    const SampleResult got = FromSampleRowResult(results[k]);
    ASSERT_EQ(got.token, want.token);
    for (int i = 0; i < vocab; ++i) {
      const float d = penalized[static_cast<int64_t>(r) * vocab + i];
      // The device leaves NaN it did not penalize in place; the host sanitized it to -inf.
      ASSERT_TRUE(d == host[i] || (std::isnan(d) && host[i] == -kInf)) << "logit " << i;
    }
    if (!s.logprobs) {
      EXPECT_TRUE(got.top.empty());
      continue;
    }
    auto near = [](float a, float b) {
      return a == b || std::abs(a - b) <= 1e-5f * std::max(1.0f, std::abs(b));
    };
    EXPECT_TRUE(near(got.logprob, want.logprob)) << got.logprob << " vs " << want.logprob;
    ASSERT_EQ(got.top.size(), want.top.size());
    for (size_t i = 0; i < want.top.size(); ++i) {
      EXPECT_EQ(got.top[i].token, want.top[i].token) << "top " << i;
      EXPECT_TRUE(near(got.top[i].logprob, want.top[i].logprob))
          << "top " << i << ": " << got.top[i].logprob << " vs " << want.top[i].logprob;
    }
  }
}

TEST(SampleRowsTest, MatchesHostSamplerOnRandomRows) {
  RequireDevice();
  auto rng = FreshRng();
  for (int vocab : {1, 2, 7, 1000, 4097, 32000, 128256}) {
    for (int rows : {1, 3, 64}) {
      if (vocab >= 32000 && rows == 64 && vocab != 32000) continue;  // keep the host side quick
      std::vector<float> logits;
      std::vector<RowSampling> samplings;
      for (int r = 0; r < rows; ++r) {
        const std::vector<float> row = RandomRow(rng, vocab);
        logits.insert(logits.end(), row.begin(), row.end());
        samplings.push_back(RandomSampling(rng, vocab));
      }
      CheckAgainstHost(logits, vocab, samplings);
      if (HasFatalFailure()) return;
    }
  }
}

TEST(SampleRowsTest, ManyDrawsOfOneDistributionMatchTheHost) {
  // One row and filter, many uniforms: every draw lands on the host's token, including draws
  // near the survivors' cumulative boundaries.
  RequireDevice();
  auto rng = FreshRng();
  const int vocab = 5000;
  const std::vector<float> row = RandomRow(rng, vocab);
  for (const auto& [top_k, top_p, min_p] : std::vector<std::tuple<int, float, float>>{
           {0, 1.0f, 0.0f}, {40, 0.9f, 0.0f}, {0, 0.7f, 0.05f}}) {
    std::vector<float> logits;
    std::vector<RowSampling> samplings;
    for (int i = 0; i < 256; ++i) {
      logits.insert(logits.end(), row.begin(), row.end());
      RowSampling s;
      s.temperature = 0.9f;
      s.top_k = top_k;
      s.top_p = top_p;
      s.min_p = min_p;
      s.uniform = (i + 0.5) / 256.0;
      samplings.push_back(s);
    }
    CheckAgainstHost(logits, vocab, samplings);
    if (HasFatalFailure()) return;
  }
}

TEST(SampleRowsTest, DegenerateRows) {
  RequireDevice();
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const std::vector<std::vector<float>> rows = {
      {-kInf, -kInf, -kInf, -kInf}, {nan, nan, nan, nan},         {1.0f, kInf, 2.0f, kInf},
      {3.0f, 3.0f, 3.0f, 3.0f},     {-1e30f, 1e30f, 0.0f, -0.0f}, {0.0f, -0.0f, 0.0f, -0.0f}};
  for (float temperature : {0.0f, 1.0f}) {
    for (float top_p : {1.0f, 0.5f}) {
      std::vector<float> logits;
      std::vector<RowSampling> samplings;
      for (size_t r = 0; r < rows.size(); ++r) {
        logits.insert(logits.end(), rows[r].begin(), rows[r].end());
        RowSampling s;
        s.temperature = temperature;
        s.top_p = top_p;
        s.top_k = 2;
        s.uniform = 0.3 + 0.1 * static_cast<double>(r);
        s.logprobs = 4;
        samplings.push_back(s);
      }
      CheckAgainstHost(logits, 4, samplings);
      if (HasFatalFailure()) return;
    }
  }
}

TEST(SampleRowsTest, RejectsBadArguments) {
  RequireDevice();
  auto ws = ValueOrDie(DeviceBuffer<uint8_t>::Allocate(SampleRowsWorkspaceBytes(1, 0)));
  EXPECT_FALSE(
      SampleRows(nullptr, 0, nullptr, 1, nullptr, 0, ws.get(), ws.size(), nullptr, nullptr).ok());
  EXPECT_FALSE(SampleRows(nullptr, kMaxSampleVocab + 1, nullptr, 1, nullptr, 0, ws.get(), ws.size(),
                          nullptr, nullptr)
                   .ok());
  EXPECT_FALSE(SampleRows(nullptr, 10, nullptr, 4, nullptr, 0, ws.get(), 1, nullptr, nullptr).ok());
  EXPECT_TRUE(
      SampleRows(nullptr, 10, nullptr, 0, nullptr, 0, ws.get(), ws.size(), nullptr, nullptr).ok());
}

}  // namespace
}  // namespace sals::kernels::gpu_test
