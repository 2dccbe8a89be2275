// RunPass on a fixture model: every prompt is prefilled in one step (so SALS prefill stays dense),
// outputs equal those of requests run alone, and progress is reported once per completion.
#include "bench/retrieval/engine_pass.h"

#include <algorithm>
#include <memory>
#include <mutex>
#include <set>
#include <vector>

#include "gtest/gtest.h"

namespace sals {
namespace {

class StepRecorder : public EngineObserver {
 public:
  void OnStep(const StepStats& stats) override {
    std::lock_guard<std::mutex> lock(mu_);
    steps_.push_back(stats);
  }
  void OnTokens(int32_t, double) override {}
  void OnRequestFinished(const Completion&, double, double) override {}
  std::vector<StepStats> steps() {
    std::lock_guard<std::mutex> lock(mu_);
    return steps_;
  }

 private:
  std::mutex mu_;
  std::vector<StepStats> steps_;
};

std::vector<PassRequest> Requests() {
  std::vector<PassRequest> requests;
  for (int i = 0; i < 7; ++i) {
    PassRequest r;
    for (int j = 0; j < 90 + 37 * i; ++j) r.prompt.push_back((31 * i + 17 * j + 3) % 2000);
    r.max_tokens = 3 + i % 4;
    requests.push_back(std::move(r));
  }
  return requests;
}

void CheckPass(const std::string& kv_format) {
  SCOPED_TRACE(kv_format);
  const std::vector<PassRequest> requests = Requests();
  int64_t max_prompt = 0, max_total = 0;
  std::set<int32_t> prompt_lengths;
  for (const PassRequest& r : requests) {
    max_prompt = std::max<int64_t>(max_prompt, r.prompt.size());
    max_total = std::max<int64_t>(max_total, r.prompt.size() + r.max_tokens);
    prompt_lengths.insert(static_cast<int32_t>(r.prompt.size()));
  }
  EngineConfig config;
  config.model_path = std::string(SALS_FIXTURES_DIR) + "/llama31-bpe";
  config.kv_format = kv_format;
  if (kv_format != "dense") config.dense_layers = std::vector<int>{0};  // layer 1 sparse
  constexpr int kInFlight = 3;
  ConfigureForPass(max_prompt, max_total, kInFlight, &config);
  EXPECT_FALSE(config.enable_prefix_caching);
  EXPECT_EQ(config.max_num_batched_tokens, max_prompt + kInFlight);

  auto recorder = std::make_shared<StepRecorder>();
  auto engine = Engine::Create(config, recorder);
  ASSERT_TRUE(engine.ok()) << engine.status();
  std::vector<std::pair<int, int>> progress;
  PassOptions options;
  options.max_in_flight = kInFlight;
  options.progress = [&](int done, int total) { progress.emplace_back(done, total); };
  auto results = RunPass(**engine, requests, options);
  ASSERT_TRUE(results.ok()) << results.status();
  ASSERT_EQ(results->size(), requests.size());
  ASSERT_EQ(progress.size(), requests.size());
  EXPECT_EQ(progress.back(), std::make_pair(7, 7));

  for (const StepStats& s : recorder->steps()) {
    EXPECT_LE(s.running, kInFlight);
    EXPECT_EQ(s.preempted, 0);
    if (s.prefill_tokens > 0) {
      EXPECT_TRUE(prompt_lengths.contains(s.prefill_tokens))
          << "a step prefilled " << s.prefill_tokens << " tokens: not one whole prompt";
    }
  }
  // Each request alone gives the same tokens.
  for (size_t i = 0; i < requests.size(); ++i) {
    const PassResult& r = (*results)[i];
    EXPECT_EQ(r.completion.prompt_tokens, static_cast<int32_t>(requests[i].prompt.size()));
    EXPECT_LE(static_cast<int32_t>(r.tokens.size()), requests[i].max_tokens);
    auto alone = RunPass(**engine, std::span(&requests[i], 1), PassOptions{});
    ASSERT_TRUE(alone.ok()) << alone.status();
    EXPECT_EQ((*alone)[0].tokens, r.tokens) << "request " << i;
    EXPECT_EQ((*alone)[0].text, r.text) << "request " << i;
  }
}

TEST(EnginePassTest, DensePrefillsWholePromptsAndMatchesRunsAlone) { CheckPass("dense"); }

TEST(EnginePassTest, SalsPrefillsWholePromptsAndMatchesRunsAlone) { CheckPass("sals-12.5"); }

// Scoring on prefix-cache hits: each second run takes the cached prefix its first run left, the
// first runs take none; on a dense pool the hit changes nothing.
void CheckPrefixHitPass(const std::string& kv_format) {
  SCOPED_TRACE(kv_format);
  const std::vector<PassRequest> requests = Requests();
  int64_t max_prompt = 0, max_total = 0;
  for (const PassRequest& r : requests) {
    max_prompt = std::max<int64_t>(max_prompt, r.prompt.size());
    max_total = std::max<int64_t>(max_total, r.prompt.size() + r.max_tokens);
  }
  EngineConfig config;
  config.model_path = std::string(SALS_FIXTURES_DIR) + "/llama31-bpe";
  config.kv_format = kv_format;
  if (kv_format != "dense") {
    config.dense_layers = std::vector<int>{0};
    // Prompts of 90+ tokens leave a cached prefix of whole blocks.
    config.recent_tokens = 16;
    config.default_policy.recent_tokens = 16;
  }
  constexpr int kInFlight = 3;
  ConfigureForPass(max_prompt, max_total, kInFlight, &config, /*prefix_hits=*/true);
  EXPECT_TRUE(config.enable_prefix_caching);
  auto engine = Engine::Create(config, nullptr);
  ASSERT_TRUE(engine.ok()) << engine.status();
  PassOptions options;
  options.max_in_flight = kInFlight;
  const std::vector<PassRequest> doubled = PrefixHitRequests(requests);
  ASSERT_EQ(doubled.size(), 2 * requests.size());
  auto results = RunPass(**engine, doubled, options);
  ASSERT_TRUE(results.ok()) << results.status();
  for (size_t i = 0; i < requests.size(); ++i) {
    const PassResult& fill = (*results)[2 * i];
    const PassResult& scored = (*results)[2 * i + 1];
    EXPECT_EQ(fill.completion.cached_prompt_tokens, 0) << "request " << i;
    EXPECT_EQ(fill.tokens.size(), 1u);
    EXPECT_GE(scored.completion.cached_prompt_tokens, 64) << "request " << i;
    // Reproducible requests bypass the cache on SALS pools (on dense ones a hit is exact, and
    // the option changes nothing).
    PassRequest whole = requests[i];
    whole.reproducible = true;
    auto alone = RunPass(**engine, std::span(&whole, 1), PassOptions{});
    ASSERT_TRUE(alone.ok()) << alone.status();
    if (kv_format == "dense") {
      EXPECT_EQ((*alone)[0].tokens, scored.tokens) << "request " << i;
    } else {
      EXPECT_EQ((*alone)[0].completion.cached_prompt_tokens, 0);
    }
  }
}

TEST(EnginePassTest, DensePrefixHitsChangeNothing) { CheckPrefixHitPass("dense"); }

TEST(EnginePassTest, SalsPrefixHitsTakeTheCachedPrefix) { CheckPrefixHitPass("sals-12.5"); }

TEST(EnginePassTest, RefusedRequestIsNamed) {
  EngineConfig config;
  config.model_path = std::string(SALS_FIXTURES_DIR) + "/llama31-bpe";
  config.kv_format = "dense";
  ConfigureForPass(16, 32, 2, &config);
  auto engine = Engine::Create(config, nullptr);
  ASSERT_TRUE(engine.ok()) << engine.status();
  std::vector<PassRequest> requests(2);
  requests[0].prompt = {1, 2, 3};
  requests[0].max_tokens = 2;
  requests[1].prompt = {1, 2, 3, 999999};  // outside the vocabulary
  auto results = RunPass(**engine, requests, PassOptions{});
  ASSERT_FALSE(results.ok());
  EXPECT_NE(std::string(results.status().message()).find("request 1"), std::string::npos)
      << results.status();
}

}  // namespace
}  // namespace sals
