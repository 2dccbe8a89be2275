// Turns one row of logits into a token id. Semantics follow vLLM's SamplingParams and sampler
// (vllm/sampling_params.py, vllm/v1/sample/); where vLLM leaves something unspecified (tie order)
// or differs between its V0 and V1 samplers, the choice made here is written down below.
//
// Pipeline, per call of SequenceSampler::Sample:
//   1. NaN logits become -inf (a broken row must never yield an out-of-range id).
//   2. Repetition penalty over the distinct prompt + output tokens: logit > 0 -> logit / p,
//      else logit * p (CTRL-style, as vLLM).
//   3. Frequency and presence penalties over the output tokens (OpenAI definition, as vLLM):
//      logit -= frequency * count; logit -= presence * (count > 0).
//   4. temperature == 0: greedy argmax of the penalized logits, ties -> lowest id.
//      Otherwise: logits / temperature, then top-k, top-p, min-p (this order, as vLLM's V0
//      sampler; V1 applies min-p before top-k/top-p), then one draw from the softmax of the
//      survivors with the sequence's RNG.
//        top-k: keeps every token whose logit >= the k-th largest (ties at the boundary are all
//               kept, as vLLM's masked_fill(logits < kth)).
//        top-p: over the top-k distribution sorted descending (ties -> lower id first), keeps a
//               token iff the mass strictly ahead of it is < top_p; so the smallest prefix whose
//               mass reaches top_p, and never fewer than one token.
//        min-p: keeps tokens with p >= min_p * p_max (min_p = 1 -> the argmax ties only).
//      Weights (probabilities relative to the max) below e^-87 count as zero. exp is computed
//      from plain float operations (logits_processors.cc), not libm, so seeded outputs do not
//      depend on the platform's math library.
//   5. Logprobs (when params.logprobs is set) are vLLM's default logprobs_mode "raw_logprobs":
//      the log-softmax of the model's raw logits (after step 1 only), i.e. before penalties,
//      temperature and filtering, so they describe the model, not the sampling procedure, and
//      are defined for greedy requests too.
#pragma once

#include <cstdint>
#include <optional>
#include <random>
#include <span>
#include <vector>

#include "absl/status/status.h"

namespace sals {

inline constexpr int kMaxLogprobs = 20;  // vLLM's default max_logprobs
// vLLM raises 0 < temperature < 0.01 to 0.01 (smaller ones overflow the logits to inf).
inline constexpr float kMinTemperature = 0.01f;

struct SamplingParams {
  float temperature = 1.0f;         // 0 = greedy; (0, 0.01) is raised to 0.01 as in vLLM
  int top_k = 0;                    // 0 or -1 (or >= vocab) = disabled
  float top_p = 1.0f;               // (0, 1]
  float min_p = 0.0f;               // [0, 1]
  float repetition_penalty = 1.0f;  // > 0; applied to prompt and output tokens (CTRL-style)
  float frequency_penalty = 0.0f;   // [-2, 2]; output tokens only
  float presence_penalty = 0.0f;    // [-2, 2]; output tokens only
  std::optional<uint64_t> seed;     // per-request seed; unset = seeded from the engine's RNG
  // As vLLM: unset = no logprobs; N in [0, 20] = the chosen token's logprob plus the N most
  // likely tokens' (so 0 = the chosen token only).
  std::optional<int> logprobs;
};

// Checks every field's range; the message names the field, e.g. "top_p must be in (0, 1], got
// 1.5".
absl::Status ValidateSamplingParams(const SamplingParams& params);

struct TokenLogprob {
  int32_t token = 0;
  float logprob = 0.0f;
};

struct SampleResult {
  int32_t token = 0;
  // Raw logprob of the chosen token (see 5. above); 0 when params.logprobs is unset.
  float logprob = 0.0f;
  // The params.logprobs most likely tokens under the raw distribution, descending, ties by
  // ascending id (fewer when the vocab is smaller); empty when params.logprobs is unset or 0.
  std::vector<TokenLogprob> top;
};

// One per sequence: owns the sequence's RNG so a seeded request is reproducible whatever else
// is batched with it. Each non-greedy Sample consumes exactly one 64-bit draw; greedy consumes
// none. The draw is turned into a double by hand (std::*_distribution is
// implementation-defined), so a seed gives the same tokens on every platform.
class SequenceSampler {
 public:
  // `params` must have passed ValidateSamplingParams.
  SequenceSampler(const SamplingParams& params, uint64_t fallback_seed);

  // `logits` (vocab_size values) is modified in place: on return it holds the penalized logits
  // (NaN -> -inf), before temperature. `prompt` and `output` are the tokens so far (for
  // penalties); ids outside [0, vocab_size) are ignored. A row that is all -inf/NaN yields
  // token 0; an empty row is a caller bug and also yields token 0.
  SampleResult Sample(std::span<float> logits, std::span<const int32_t> prompt,
                      std::span<const int32_t> output);

  // The params in effect (temperature raised to kMinTemperature where needed).
  const SamplingParams& params() const { return params_; }

 private:
  SamplingParams params_;
  std::mt19937_64 rng_;
};

}  // namespace sals
