// One request's scheduling state: its tokens, how many of them have KV in the cache, and the
// blocks and exact slot holding that KV. No sampling or tokenizer state lives here.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "engine/sals/policy.h"

namespace sals {

// The finished states come last (Sequence::is_finished).
enum class SequenceStatus {
  kWaiting,          // queued, holds no blocks (new, or preempted for recompute)
  kRunning,          // holds blocks (and a slot); prefilling or decoding
  kFinishedStopped,  // Scheduler::Finish (stop token or string)
  kFinishedLength,   // reached max_tokens
  kFinishedAborted,  // Scheduler::Abort
};

const char* SequenceStatusName(SequenceStatus status);

// Owned by the engine; the scheduler holds a pointer from Add until the sequence finishes.
struct Sequence {
  Sequence(uint64_t id, std::vector<int32_t> prompt, int32_t max_tokens, SalsPolicy policy = {});

  int32_t num_tokens() const { return static_cast<int32_t>(token_ids.size()); }
  int32_t num_output_tokens() const { return num_tokens() - num_prompt_tokens; }
  std::span<const int32_t> output_tokens() const {
    return std::span<const int32_t>(token_ids).subspan(num_prompt_tokens);
  }
  bool is_finished() const { return status > SequenceStatus::kRunning; }

  uint64_t id;
  std::vector<int32_t> token_ids;  // the prompt, then the generated tokens
  int32_t num_prompt_tokens;
  int32_t max_tokens;  // generated tokens at most
  SalsPolicy policy;   // handed to the backend as is
  // Computed the same way whatever the cache holds and whatever else runs: no prefix-cache
  // hits, the prompt prefilled in one chunk (the scheduler waits for a step with room for it,
  // unless the prompt exceeds a whole step's budget), and after a preemption the prompt again in
  // one chunk, then the generated tokens one decode step each. The engine sets it for requests
  // that ask (GenerationRequest::reproducible) on SALS pools, where a cached or chunked context
  // is attended through latents and quantized values instead of exact keys (docs/SALS.md).
  bool reproducible = false;

  SequenceStatus status = SequenceStatus::kWaiting;
  uint64_t arrival = 0;  // set by Scheduler::Add; larger = newer
  // Tokens whose KV is in the cache; the next step computes token_ids[num_computed_tokens..].
  int32_t num_computed_tokens = 0;
  // Tokens the prefix cache supplied at the latest admission (usage reporting).
  int32_t num_prefix_cached_tokens = 0;
  std::vector<int32_t> block_table;  // physical blocks, covering every token while running
  int32_t exact_slot = -1;           // SALS per-sequence slot; -1 when none

  // Block manager state. Chained hashes of the leading full blocks of token_ids (a pure function
  // of the tokens, so it survives preemption), and how many leading blocks of block_table have
  // already been offered to the prefix cache.
  std::vector<uint64_t> block_hashes;
  int32_t num_cached_blocks = 0;
};

}  // namespace sals
