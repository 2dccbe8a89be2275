// Turns one row of logits into a token id. Semantics follow vLLM's SamplingParams.
#pragma once

#include <cstdint>
#include <optional>
#include <random>
#include <span>
#include <vector>

#include "absl/status/status.h"

namespace sals {

struct SamplingParams {
  float temperature = 1.0f;  // 0 = greedy
  int top_k = 0;             // 0 or -1 = disabled
  float top_p = 1.0f;        // (0, 1]
  float min_p = 0.0f;        // [0, 1]
  float repetition_penalty = 1.0f;  // > 0; applied to prompt and output tokens (CTRL-style)
  float frequency_penalty = 0.0f;   // [-2, 2]; output tokens only
  float presence_penalty = 0.0f;    // [-2, 2]; output tokens only
  std::optional<uint64_t> seed;     // per-request seed; unset = seeded from the engine's RNG
  int logprobs = 0;                 // number of top logprobs to return (0 = none)
};

// Checks every field's range; the message names the field.
absl::Status ValidateSamplingParams(const SamplingParams& params);

struct TokenLogprob {
  int32_t token = 0;
  float logprob = 0.0f;
};

struct SampleResult {
  int32_t token = 0;
  float logprob = 0.0f;                 // of the chosen token, under the processed distribution
  std::vector<TokenLogprob> top;        // the params.logprobs most likely, descending
};

// One per sequence: owns the sequence's RNG so a seeded request is reproducible whatever else
// is batched with it.
class SequenceSampler {
 public:
  SequenceSampler(const SamplingParams& params, uint64_t fallback_seed);

  // `logits` (vocab_size values) is modified in place. `prompt` and `output` are the tokens so
  // far (for penalties).
  SampleResult Sample(std::span<float> logits, std::span<const int32_t> prompt,
                      std::span<const int32_t> output);

  const SamplingParams& params() const { return params_; }

 private:
  SamplingParams params_;
  std::mt19937_64 rng_;
};

}  // namespace sals
