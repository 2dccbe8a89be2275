// What a caller hands the engine for one generation, and what flows back.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "engine/sals/policy.h"
#include "engine/sampling/sampler.h"

namespace sals {

enum class FinishReason { kStop, kLength, kAbort };
std::string_view FinishReasonName(FinishReason reason);  // "stop", "length", "abort"

struct GenerationRequest {
  std::string id;  // unique among live requests; empty = the engine makes one
  std::vector<int32_t> prompt;
  SamplingParams sampling;
  int32_t max_tokens = 256;
  std::vector<std::string> stop;        // stop strings, cut from the text
  std::vector<int32_t> stop_token_ids;  // extra stop tokens, kept in the ids
  bool ignore_eos = false;
  std::optional<SalsPolicy> policy;  // unset = the engine's default
  // SALS pools: compute this request as if it ran alone on an empty server (no prefix-cache
  // hits, the prompt in one prefill chunk, a preemption replayed token by token), so that its
  // output does not depend on what the cache holds or what else runs (Sequence::reproducible,
  // docs/SALS.md). The prompt must fit one prefill chunk (MaxPrefillChunk). No effect on dense
  // pools, whose cached and chunked contexts are exact anyway.
  bool reproducible = false;
};

struct TokenChunk {
  std::vector<int32_t> token_ids;
  std::string text;                    // valid UTF-8; stop-string candidates held back
  std::vector<SampleResult> logprobs;  // one per token when the request asked for logprobs
};

struct Completion {
  FinishReason reason = FinishReason::kStop;
  std::string stop_reason;  // the stop string, or "eos"/"stop_token" with the id
  int32_t prompt_tokens = 0;
  int32_t completion_tokens = 0;
  int32_t cached_prompt_tokens = 0;
  double queue_ms = 0.0;  // arrival to first scheduled
  double ttft_ms = 0.0;   // arrival to first token
  double total_ms = 0.0;  // arrival to completion
  int32_t preemptions = 0;
  // OK, or why the engine could not serve the request (reason kAbort): Internal for a request in
  // flight when the backend failed, Unavailable for one the failed engine never started.
  absl::Status error;
};

// Receives one request's output. Both calls run on the engine's step thread and must not block;
// OnComplete comes exactly once, after every chunk.
class RequestSink {
 public:
  virtual ~RequestSink() = default;
  virtual void OnChunk(TokenChunk chunk) = 0;
  virtual void OnComplete(const Completion& completion) = 0;
};

}  // namespace sals
