// The stages of SequenceSampler (see sampler.h for the semantics and their vLLM origin), as free
// functions over one row of logits so each can be tested, and reused by a batched sampler.
// None of them allocates per call beyond the growth of thread-local scratch buffers, and the
// penalties touch only the tokens present in prompt/output.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "engine/sampling/sampler.h"

namespace sals {

// NaN -> -inf, so that every later comparison is a strict weak order. Every function below
// expects a sanitized row.
void SanitizeLogits(std::span<float> logits);

// The tokens a row's penalties touch, each once in order of first occurrence: every distinct
// token of `output` with its count there, and with `include_prompt` also the prompt's other
// distinct tokens (count 0). Ids outside [0, vocab) are kept (ApplyPenalties skips them).
std::vector<PenaltyToken> CollectPenaltyTokens(std::span<const int32_t> prompt,
                                               std::span<const int32_t> output,
                                               bool include_prompt);

// For each entry (distinct tokens) in vocab: the repetition penalty (logit > 0 -> logit /
// repetition, else * repetition; 1 = off), then for entries with output_count c > 0:
// logit -= frequency * c; logit -= presence (two subtractions, as vLLM's). Per token these are
// the vLLM steps in vLLM's order: repetition over prompt + output, then frequency/presence.
void ApplyPenalties(std::span<float> logits, std::span<const PenaltyToken> tokens, float repetition,
                    float frequency, float presence);

// Index of the largest logit, lowest id on ties (as torch.argmax); 0 for an all -inf (or empty)
// row.
int32_t GreedyArgmax(std::span<const float> logits);

// The k-th largest value (1-based) of a row without NaN; requires 1 <= k <= size.
float KthLargest(std::span<const float> logits, int64_t k);

struct CandidateFilter {
  float temperature = 1.0f;  // > 0
  int top_k = 0;             // <= 0 or >= vocab: disabled
  float top_p = 1.0f;        // (0, 1]
  float min_p = 0.0f;        // [0, 1]
};

struct Candidate {
  float logit;  // penalized, before temperature
  int32_t id;
  // exp((logit - max) / temperature): the probability up to one shared factor. Weights below
  // e^-87 (~1e-38) are taken as 0, so such tokens are never drawn.
  float weight;
};

// The tokens that survive temperature + top-k + top-p + min-p, each with a weight > 0, in
// ascending id order (the order SampleCandidate walks; the device sampler walks the same). `logits`
// must be sanitized. Empty iff every logit is -inf.
void SelectCandidates(std::span<const float> logits, const CandidateFilter& filter,
                      std::vector<Candidate>* out);

// Draws from `candidates` in proportion to their weights; `uniform` in [0, 1). 0 if empty.
int32_t SampleCandidate(std::span<const Candidate> candidates, double uniform);

// SelectCandidates + SampleCandidate, with a dense fast path when no filter is active (plain
// temperature sampling keeps every token, so no candidate list is built). 0 if all -inf.
int32_t SampleToken(std::span<const float> logits, const CandidateFilter& filter, double uniform);

// A double in [0, 1) from the top 53 bits of a raw 64-bit draw (portable, unlike
// std::uniform_real_distribution).
inline double UniformFromBits(uint64_t bits) { return static_cast<double>(bits >> 11) * 0x1.0p-53; }

// Fills result->logprob (of `chosen`) and result->top (the `num_top` most likely, descending,
// ties by id) from the log-softmax of `raw` (sanitized). An all -inf row gives -inf
// everywhere; +inf logits share the whole mass.
void ComputeLogprobs(std::span<const float> raw, int32_t chosen, int num_top, SampleResult* result);

}  // namespace sals
