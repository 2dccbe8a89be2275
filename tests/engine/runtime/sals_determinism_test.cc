// What a prefix-cache hit and recompute preemption do to greedy answers on a SALS pool, on the
// CPU reference with the embedded default model (models/default, sals-25), and the per-request
// `reproducible` option that makes answers independent of both.
//
// A prompt prefilled in one chunk attends exact keys and values. After a prefix-cache hit of P
// tokens, the recomputed tail attends [sinks, P) through rebuilt latent keys and quantized
// values: an approximation, not a defect, as long as the engine computes exactly that. The
// tests check it does (the hit's logits equal a direct backend run of that attention pattern),
// that hits leave the shared blocks unchanged (a third run equals the second), and print the
// logprob drift between the two.
#include <algorithm>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <memory>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "engine/runtime/engine.h"
#include "engine/runtime/model_setup.h"
#include "gtest/gtest.h"

namespace sals {
namespace {

constexpr char kModel[] = SALS_SOURCE_DIR "/models/default";
constexpr char kText[] = SALS_SOURCE_DIR "/tests/fixtures/calibration.txt";
constexpr int kTopLogprobs = 20;

EngineConfig SalsConfig(int num_blocks) {
  EngineConfig c;
  c.model_path = kModel;
  c.kv_format = "sals-25";
  c.block_size = 16;
  c.num_blocks = num_blocks;
  c.max_num_seqs = 8;
  c.max_num_batched_tokens = 1024;
  c.cpu_threads = 1;  // ctest runs tests side by side on few cores
  return c;
}

std::unique_ptr<Engine> MakeEngine(const EngineConfig& config) {
  auto engine = Engine::Create(config, nullptr);
  EXPECT_TRUE(engine.ok()) << engine.status();
  return engine.ok() ? std::move(*engine) : nullptr;
}

// Prompts of natural text: BOS, then `length` tokens of the calibration text from `offset` on.
std::vector<int32_t> TextPrompt(const Tokenizer& tokenizer, int offset, int length) {
  static const std::vector<int32_t> all = [&] {
    std::ifstream in(kText);
    const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    return tokenizer.Encode(text, /*add_bos=*/false);
  }();
  std::vector<int32_t> p = {tokenizer.bos_id()};
  for (int i = 0; i < length; ++i) p.push_back(all[(offset + i) % all.size()]);
  return p;
}

class LogprobSink : public RequestSink {
 public:
  void OnChunk(TokenChunk chunk) override {
    std::lock_guard<std::mutex> lock(mu_);
    samples_.insert(samples_.end(), chunk.logprobs.begin(), chunk.logprobs.end());
  }
  void OnComplete(const Completion& completion) override {
    std::lock_guard<std::mutex> lock(mu_);
    done_ = completion;
    cv_.notify_all();
  }
  std::optional<Completion> Wait() {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait_for(lock, std::chrono::seconds(300), [&] { return done_.has_value(); });
    return done_;
  }
  std::vector<SampleResult> samples() {
    std::lock_guard<std::mutex> lock(mu_);
    return samples_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<SampleResult> samples_;
  std::optional<Completion> done_;
};

struct Output {
  std::vector<SampleResult> samples;  // one per generated token, with the top 20
  Completion done;
  std::vector<int32_t> tokens() const {
    std::vector<int32_t> t;
    for (const SampleResult& s : samples) t.push_back(s.token);
    return t;
  }
};

GenerationRequest Greedy(std::vector<int32_t> prompt, int max_tokens, bool reproducible) {
  GenerationRequest r;
  r.prompt = std::move(prompt);
  r.max_tokens = max_tokens;
  r.sampling.temperature = 0.0f;
  r.sampling.logprobs = kTopLogprobs;
  r.ignore_eos = true;
  r.reproducible = reproducible;
  return r;
}

Output Collect(LogprobSink& sink) {
  Output run;
  auto done = sink.Wait();
  EXPECT_TRUE(done.has_value());
  if (done) run.done = *done;
  run.samples = sink.samples();
  return run;
}

Output Generate(Engine& engine, const std::vector<int32_t>& prompt, int max_tokens,
                bool reproducible = false) {
  auto sink = std::make_shared<LogprobSink>();
  EXPECT_TRUE(engine.Submit(Greedy(prompt, max_tokens, reproducible), sink).ok());
  return Collect(*sink);
}

// The largest |logprob difference| over the tokens both top lists hold.
double Drift(const SampleResult& a, const SampleResult& b) {
  double drift = 0.0;
  for (const TokenLogprob& x : a.top) {
    for (const TokenLogprob& y : b.top) {
      if (x.token == y.token) drift = std::max(drift, std::fabs(double{x.logprob} - y.logprob));
    }
  }
  return drift;
}

// Drift at every generated position up to and including the first that differs, and that
// position (-1: none differs).
struct Comparison {
  int first_difference = -1;
  double first_token_drift = 0.0;   // over the top 20 at the first generated token
  double first_chosen_drift = 0.0;  // of the first generated token's own logprob
  double max_drift = 0.0;           // over the top 20 at the positions whose contexts agree
};
Comparison Compare(const Output& a, const Output& b) {
  Comparison c;
  const size_t n = std::min(a.samples.size(), b.samples.size());
  for (size_t i = 0; i < n; ++i) {
    const double d = Drift(a.samples[i], b.samples[i]);
    if (i == 0) {
      c.first_token_drift = d;
      c.first_chosen_drift = std::fabs(double{a.samples[0].logprob} - b.samples[0].logprob);
    }
    c.max_drift = std::max(c.max_drift, d);
    if (a.samples[i].token != b.samples[i].token) {
      c.first_difference = static_cast<int>(i);
      break;
    }
  }
  return c;
}

// Log-softmax of one logits row.
std::vector<double> LogSoftmax(const float* logits, int n) {
  double max = logits[0];
  for (int i = 1; i < n; ++i) max = std::max(max, double{logits[i]});
  double sum = 0.0;
  for (int i = 0; i < n; ++i) sum += std::exp(logits[i] - max);
  std::vector<double> out(n);
  for (int i = 0; i < n; ++i) out[i] = logits[i] - max - std::log(sum);
  return out;
}

// The largest |difference| between the engine's top logprobs and a full log-softmax row.
double Distance(const SampleResult& engine, const std::vector<double>& row) {
  double d = 0.0;
  for (const TokenLogprob& t : engine.top) d = std::max(d, std::fabs(t.logprob - row[t.token]));
  return d;
}

// Runs the backend directly on one sequence in slot 0: the prompt's first `cached` tokens in
// one prefill, then the rest with the slot's exact copies valid from `exact_valid_from` on.
// Returns the log-softmax of the last token's logits.
std::vector<double> DirectLastLogprobs(Backend& backend, const std::vector<int32_t>& prompt,
                                       int cached, int exact_valid_from) {
  const int block = backend.kv_pool().block_size;
  std::vector<int32_t> table;
  for (int b = 0; b * block < static_cast<int>(prompt.size()); ++b) table.push_back(b);
  ForwardOutput out;
  auto slice = [&](int begin, int end, int valid_from) {
    ForwardBatch batch;
    batch.tokens.assign(prompt.begin() + begin, prompt.begin() + end);
    SequenceSlice s;
    s.num_tokens = end - begin;
    s.context_len = begin;
    s.block_table = table;
    s.exact_slot = 0;
    s.exact_valid_from = valid_from;
    batch.seqs.push_back(s);
    EXPECT_TRUE(backend.Forward(batch, &out).ok());
  };
  if (cached > 0) slice(0, cached, 0);
  slice(cached, static_cast<int>(prompt.size()), exact_valid_from);
  return LogSoftmax(out.logits.data(), backend.config().vocab_size);  // the last token only
}

// Prompt lengths of the measurements: 5 by default (CI), more with SALS_DETERMINISM_PROMPTS=N.
std::vector<int> PromptLengths() {
  int n = 5;
  if (const char* env = std::getenv("SALS_DETERMINISM_PROMPTS")) n = std::max(1, std::atoi(env));
  std::vector<int> lengths;
  for (int i = 0; i < n; ++i) lengths.push_back(150 + (i * 61) % 450);
  return lengths;
}

TEST(SalsDeterminismTest, PrefixCacheHitIsExactlyTheLatentApproximationOfTheCachedPrefix) {
  const EngineConfig config = SalsConfig(/*num_blocks=*/512);
  auto engine = MakeEngine(config);
  ASSERT_NE(engine, nullptr);
  auto direct = LoadModel(config);
  ASSERT_TRUE(direct.ok()) << direct.status();

  constexpr int kGenerated = 16;
  int first_token_changed = 0, output_changed = 0;
  double sum_first = 0.0, max_first = 0.0, sum_chosen = 0.0, max_chosen = 0.0, max_drift = 0.0;
  double max_distance = 0.0;
  const std::vector<int> lengths = PromptLengths();
  std::printf("prompt  cached  top-20 drift  chosen drift  max drift  first diff\n");
  for (size_t i = 0; i < lengths.size(); ++i) {
    const std::vector<int32_t> prompt =
        TextPrompt(*engine->tokenizer(), 997 * static_cast<int>(i), lengths[i]);
    const int n = static_cast<int>(prompt.size());
    const Output whole = Generate(*engine, prompt, kGenerated);
    const Output hit = Generate(*engine, prompt, kGenerated);
    const Output hit_again = Generate(*engine, prompt, kGenerated);
    ASSERT_EQ(whole.done.cached_prompt_tokens, 0) << "prompt " << i;
    // At least the recent window (64) is recomputed; the rest comes in whole blocks.
    const int cached = (n - 64) / 16 * 16;
    ASSERT_EQ(hit.done.cached_prompt_tokens, cached) << "prompt " << i;
    ASSERT_EQ(hit.samples.size(), static_cast<size_t>(kGenerated));

    // No defect: the fresh run is the direct one-chunk prefill; the hit is the direct run of
    // "[sinks, P) through latents, no exact copies before P"; a second hit computes the same
    // bits (a hit leaves the shared blocks as they were).
    const double fresh_distance =
        Distance(whole.samples[0], DirectLastLogprobs(*direct->backend, prompt, 0, 0));
    const double hit_distance =
        Distance(hit.samples[0], DirectLastLogprobs(*direct->backend, prompt, cached, cached));
    EXPECT_LT(fresh_distance, 1e-4) << "prompt " << i;
    EXPECT_LT(hit_distance, 1e-4) << "prompt " << i;
    max_distance = std::max({max_distance, fresh_distance, hit_distance});
    // The check tells the patterns apart: with the ring's exact copies of [P - 64, P) read (as a
    // wrong exact_valid_from would), the logits are not the hit's.
    EXPECT_GT(Distance(hit.samples[0], DirectLastLogprobs(*direct->backend, prompt, cached, 0)),
              1e-3)
        << "prompt " << i;
    ASSERT_EQ(hit_again.tokens(), hit.tokens()) << "prompt " << i;
    for (int t = 0; t < kGenerated; ++t) {
      ASSERT_EQ(hit_again.samples[t].logprob, hit.samples[t].logprob) << "prompt " << i;
    }

    const Comparison c = Compare(whole, hit);
    std::printf("%6d  %6d  %12.5f  %12.5f  %9.5f  %10d\n", n, cached, c.first_token_drift,
                c.first_chosen_drift, c.max_drift, c.first_difference);
    sum_first += c.first_token_drift;
    max_first = std::max(max_first, c.first_token_drift);
    sum_chosen += c.first_chosen_drift;
    max_chosen = std::max(max_chosen, c.first_chosen_drift);
    max_drift = std::max(max_drift, c.max_drift);
    first_token_changed += c.first_difference == 0;
    output_changed += c.first_difference >= 0;
  }
  const double count = static_cast<double>(lengths.size());
  std::printf(
      "prefix hit vs whole prefill, %zu prompts, sals-25: first token: top-20 logprob drift mean "
      "%.4f max %.4f, chosen token's logprob drift mean %.4f max %.4f; max drift while outputs "
      "agree %.4f; first token changed %d, output (%d tokens) changed %d; engine vs direct "
      "backend run at most %.2g\n",
      lengths.size(), sum_first / count, max_first, sum_chosen / count, max_chosen, max_drift,
      first_token_changed, kGenerated, output_changed, max_distance);
  // The cached prefix is attended through rank D/4 latents and 4-bit values: not exact.
  EXPECT_GT(max_first, 1e-3);
}

TEST(SalsDeterminismTest, ReproducibleRequestsIgnoreTheCacheAndMatchAFreshPrefill) {
  auto engine = MakeEngine(SalsConfig(/*num_blocks=*/256));
  ASSERT_NE(engine, nullptr);
  double max_hit_drift = 0.0;
  for (int i = 0; i < 3; ++i) {
    const std::vector<int32_t> prompt = TextPrompt(*engine->tokenizer(), 5000 + 811 * i, 300);
    const Output first = Generate(*engine, prompt, 8, /*reproducible=*/true);
    const Output again = Generate(*engine, prompt, 8, /*reproducible=*/true);
    EXPECT_EQ(first.done.cached_prompt_tokens, 0);
    EXPECT_EQ(again.done.cached_prompt_tokens, 0);
    ASSERT_EQ(again.tokens(), first.tokens());
    for (size_t t = 0; t < first.samples.size(); ++t) {
      EXPECT_EQ(again.samples[t].logprob, first.samples[t].logprob) << "prompt " << i;
    }
    // The same request without the option takes the blocks the first two left in the cache.
    const Output hit = Generate(*engine, prompt, 8);
    EXPECT_GT(hit.done.cached_prompt_tokens, 0);
    max_hit_drift = std::max(max_hit_drift, Compare(first, hit).first_token_drift);
  }
  EXPECT_GT(max_hit_drift, 1e-3) << "the option made no difference to measure";
}

// Runs `prompts` at once (each reproducible or not) and returns their outputs.
std::vector<Output> GenerateTogether(Engine& engine,
                                     const std::vector<std::vector<int32_t>>& prompts,
                                     int max_tokens, bool reproducible) {
  std::vector<std::shared_ptr<LogprobSink>> sinks;
  for (const auto& p : prompts) {
    sinks.push_back(std::make_shared<LogprobSink>());
    EXPECT_TRUE(engine.Submit(Greedy(p, max_tokens, reproducible), sinks.back()).ok());
  }
  std::vector<Output> out;
  for (auto& sink : sinks) out.push_back(Collect(*sink));
  return out;
}

TEST(SalsDeterminismTest, PreemptedReproducibleRequestsMatchTheirRunsAlone) {
  constexpr int kGenerated = 40;
  auto alone_engine = MakeEngine(SalsConfig(/*num_blocks=*/256));
  ASSERT_NE(alone_engine, nullptr);
  std::vector<std::vector<int32_t>> prompts;
  std::vector<Output> alone;
  for (int i = 0; i < 4; ++i) {
    prompts.push_back(TextPrompt(*alone_engine->tokenizer(), 20000 + 1301 * i, 100 + 30 * i));
    alone.push_back(Generate(*alone_engine, prompts.back(), kGenerated, /*reproducible=*/true));
  }
  // 16 blocks of 16 tokens hold one or two of these sequences, not four: the newest are
  // preempted by recompute, with the prefix cache (their own blocks) or without.
  for (const bool caching : {false, true}) {
    EngineConfig config = SalsConfig(/*num_blocks=*/16);
    config.enable_prefix_caching = caching;
    for (const bool reproducible : {false, true}) {
      auto engine = MakeEngine(config);
      ASSERT_NE(engine, nullptr);
      const std::vector<Output> together =
          GenerateTogether(*engine, prompts, kGenerated, reproducible);
      int preempted = 0, changed = 0;
      double max_drift = 0.0;
      for (size_t i = 0; i < prompts.size(); ++i) {
        const Comparison c = Compare(alone[i], together[i]);
        preempted += together[i].done.preemptions > 0;
        changed += c.first_difference >= 0;
        max_drift = std::max(max_drift, c.max_drift);
        std::printf(
            "caching %d reproducible %d: request %zu preempted %d times, first diff %d, "
            "max top-20 drift while equal %.5f\n",
            caching, reproducible, i, together[i].done.preemptions, c.first_difference,
            c.max_drift);
        if (reproducible) {
          // Computed as alone: the same tokens, logprobs equal up to batch-shape rounding
          // (a recomputed context moves them by tenths of a nat).
          EXPECT_EQ(together[i].tokens(), alone[i].tokens()) << "request " << i;
          EXPECT_LT(c.max_drift, 1e-3) << "request " << i;
          EXPECT_EQ(together[i].done.cached_prompt_tokens, 0);
        }
      }
      std::printf(
          "preemption, caching %d, reproducible %d: %d of %zu preempted, %d outputs "
          "changed, max drift %.5f\n",
          caching, reproducible, preempted, prompts.size(), changed, max_drift);
      EXPECT_GT(preempted, 0) << "the pool was meant to run out";
    }
  }
}

}  // namespace
}  // namespace sals
