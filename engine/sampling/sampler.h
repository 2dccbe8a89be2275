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

#include "absl/container/flat_hash_map.h"
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

// A token a row's penalties touch (see CollectPenaltyTokens): a distinct token of the prompt
// or output, with its count in the output.
struct PenaltyToken {
  int32_t token = 0;
  int32_t output_count = 0;
};

// Distinct tokens in order of first occurrence, each with a count (the output_count of its
// PenaltyToken): what CollectPenaltyTokens builds at once and a SequenceSampler keeps up to date.
class PenaltyTokenList {
 public:
  // Adds `count` to `token`'s entry, making the entry (count 0) on first sight.
  void Add(int32_t token, int32_t count);
  void Clear();
  const std::vector<PenaltyToken>& tokens() const { return tokens_; }

 private:
  std::vector<PenaltyToken> tokens_;
  absl::flat_hash_map<int32_t, size_t> index_;  // token -> its entry
};

// One sequence's token choice for one step as plain data, so that any backend can carry it out:
// the host reference (SampleRow) or a device sampler (the CUDA backend's). Made by
// SequenceSampler::Prepare.
struct RowSampling {
  float temperature = 0.0f;  // 0 = greedy; otherwise >= kMinTemperature
  int top_k = 0;
  float top_p = 1.0f;
  float min_p = 0.0f;
  float repetition_penalty = 1.0f;
  float frequency_penalty = 0.0f;
  float presence_penalty = 0.0f;
  double uniform = 0.0;  // the sequence's draw in [0, 1); unused when greedy
  std::optional<int> logprobs;
  // Distinct tokens; prompt-only ones (count 0) are listed only while repetition_penalty != 1,
  // and the list is empty when no penalty is on.
  std::vector<PenaltyToken> penalties;
};

// Steps 1-5 above for `row` on one row of logits, modified in place as Sample's.
SampleResult SampleRow(std::span<float> logits, const RowSampling& row);

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

  // What Sample would do next, as data (consumes the draw Sample would): Sample(logits, prompt,
  // output) == SampleRow(logits, Prepare(prompt, output)). The penalty list is kept up to date
  // incrementally while successive calls pass the same prompt and a growing output (as the
  // engine's do) and rebuilt otherwise.
  RowSampling Prepare(std::span<const int32_t> prompt, std::span<const int32_t> output);

  // The params in effect (temperature raised to kMinTemperature where needed).
  const SamplingParams& params() const { return params_; }

 private:
  void TrackPenalties(std::span<const int32_t> prompt, std::span<const int32_t> output);

  SamplingParams params_;
  std::mt19937_64 rng_;
  // Incremental penalty list (see Prepare) and the spans it was built from.
  PenaltyTokenList penalties_;
  const int32_t* prompt_data_ = nullptr;
  size_t prompt_size_ = 0;
  const int32_t* output_data_ = nullptr;
  size_t output_seen_ = 0;
};

}  // namespace sals
