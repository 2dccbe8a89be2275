#include "engine/sampling/sampler.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "engine/sampling/logits_processors.h"

namespace sals {

// Ranges and wording after vLLM's SamplingParams._verify_args; every check is written so that
// NaN fails it.
absl::Status ValidateSamplingParams(const SamplingParams& p) {
  auto invalid = [](auto&&... parts) { return absl::InvalidArgumentError(absl::StrCat(parts...)); };
  if (!std::isfinite(p.temperature)) {
    return invalid("temperature must be a finite number, got ", p.temperature);
  }
  if (!(p.temperature >= 0.0f)) {
    return invalid("temperature must be non-negative, got ", p.temperature);
  }
  if (p.top_k < -1) {
    return invalid("top_k must be -1 or 0 (disabled), or at least 1, got ", p.top_k);
  }
  if (!(p.top_p > 0.0f && p.top_p <= 1.0f)) {
    return invalid("top_p must be in (0, 1], got ", p.top_p);
  }
  if (!(p.min_p >= 0.0f && p.min_p <= 1.0f)) {
    return invalid("min_p must be in [0, 1], got ", p.min_p);
  }
  if (!std::isfinite(p.repetition_penalty)) {
    return invalid("repetition_penalty must be a finite number, got ", p.repetition_penalty);
  }
  if (!(p.repetition_penalty > 0.0f)) {
    return invalid("repetition_penalty must be greater than zero, got ", p.repetition_penalty);
  }
  if (!(p.frequency_penalty >= -2.0f && p.frequency_penalty <= 2.0f)) {
    return invalid("frequency_penalty must be in [-2, 2], got ", p.frequency_penalty);
  }
  if (!(p.presence_penalty >= -2.0f && p.presence_penalty <= 2.0f)) {
    return invalid("presence_penalty must be in [-2, 2], got ", p.presence_penalty);
  }
  if (p.logprobs.has_value() && (*p.logprobs < 0 || *p.logprobs > kMaxLogprobs)) {
    return invalid("logprobs must be in [0, ", kMaxLogprobs, "], got ", *p.logprobs);
  }
  return absl::OkStatus();
}

SequenceSampler::SequenceSampler(const SamplingParams& params, uint64_t fallback_seed)
    : params_(params), rng_(params.seed.value_or(fallback_seed)) {
  // As vLLM's SamplingParams.__post_init__: tiny temperatures overflow the scaled logits.
  if (params_.temperature > 0.0f && params_.temperature < kMinTemperature) {
    params_.temperature = kMinTemperature;
  }
}

void PenaltyTokenList::Add(int32_t token, int32_t count) {
  auto [it, inserted] = index_.try_emplace(token, tokens_.size());
  if (inserted) tokens_.push_back(PenaltyToken{token, 0});
  tokens_[it->second].output_count += count;
}

void PenaltyTokenList::Clear() {
  tokens_.clear();
  index_.clear();
}

SampleResult SampleRow(std::span<float> logits, const RowSampling& row) {
  SampleResult result;
  if (logits.empty()) return result;
  SanitizeLogits(logits);

  // Raw logprobs need the logits from before the penalties; copy only when both are in play.
  const bool penalize = !row.penalties.empty();
  std::span<const float> raw = logits;
  if (row.logprobs.has_value() && penalize) {
    thread_local std::vector<float> raw_copy;
    raw_copy.assign(logits.begin(), logits.end());
    raw = raw_copy;
  }
  if (penalize) {
    ApplyPenalties(logits, row.penalties, row.repetition_penalty, row.frequency_penalty,
                   row.presence_penalty);
  }
  if (row.temperature == 0.0f) {
    result.token = GreedyArgmax(logits);
  } else {
    result.token =
        SampleToken(logits, CandidateFilter{row.temperature, row.top_k, row.top_p, row.min_p},
                    row.uniform);  // all -inf -> 0
  }
  if (row.logprobs.has_value()) ComputeLogprobs(raw, result.token, *row.logprobs, &result);
  return result;
}

void SequenceSampler::TrackPenalties(std::span<const int32_t> prompt,
                                     std::span<const int32_t> output) {
  const bool repetition = params_.repetition_penalty != 1.0f;
  if (!repetition && params_.frequency_penalty == 0.0f && params_.presence_penalty == 0.0f) {
    return;
  }
  if (prompt.data() != prompt_data_ || prompt.size() != prompt_size_ ||
      output.data() != output_data_ || output.size() < output_seen_) {
    penalties_.Clear();
    prompt_data_ = prompt.data();
    prompt_size_ = prompt.size();
    output_data_ = output.data();
    output_seen_ = 0;
    if (repetition) {
      for (int32_t t : prompt) penalties_.Add(t, 0);
    }
  }
  for (size_t i = output_seen_; i < output.size(); ++i) penalties_.Add(output[i], 1);
  output_seen_ = output.size();
}

RowSampling SequenceSampler::Prepare(std::span<const int32_t> prompt,
                                     std::span<const int32_t> output) {
  RowSampling row;
  row.temperature = params_.temperature;
  row.top_k = params_.top_k;
  row.top_p = params_.top_p;
  row.min_p = params_.min_p;
  row.repetition_penalty = params_.repetition_penalty;
  row.frequency_penalty = params_.frequency_penalty;
  row.presence_penalty = params_.presence_penalty;
  row.logprobs = params_.logprobs;
  if (params_.temperature != 0.0f) row.uniform = UniformFromBits(rng_());
  TrackPenalties(prompt, output);
  row.penalties = penalties_.tokens();
  return row;
}

SampleResult SequenceSampler::Sample(std::span<float> logits, std::span<const int32_t> prompt,
                                     std::span<const int32_t> output) {
  return SampleRow(logits, Prepare(prompt, output));
}

}  // namespace sals
