// Runs a list of greedy requests through one engine with continuous batching, so that every
// prompt is prefilled in a single step: the next request is submitted only once the previous one
// has its first token. With SALS storage a prefill split over steps would attend to the earlier
// chunks through the compressed cache; one chunk keeps prefill dense, as the paper's protocol
// (and the dense baseline) has it. Decodes of up to `max_in_flight` sequences batch meanwhile.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/runtime/engine.h"

namespace sals {

struct PassRequest {
  std::vector<int32_t> prompt;
  int32_t max_tokens = 16;
  std::optional<SalsPolicy> policy;
  bool reproducible = false;  // GenerationRequest::reproducible: no prefix-cache hit
};

struct PassResult {
  std::vector<int32_t> tokens;
  std::string text;  // as streamed to a client
  Completion completion;
};

struct PassOptions {
  int max_in_flight = 16;  // live requests at once (the engine's max_num_seqs bounds it too)
  // Called from the calling thread after each completion: (completed, total).
  std::function<void(int, int)> progress;
};

// EngineConfig limits a pass needs: a prefill budget that holds the longest prompt next to every
// running decode, and a pool that holds max_in_flight sequences of `max_total_tokens`, so that
// nothing is chunked or preempted. Prefix caching is off: every request prefills its prompt.
// With `prefix_hits` it is on, and the pool holds one sequence more: a prompt run just before
// (PrefixHitRequests) keeps its blocks cached until its second run takes them.
void ConfigureForPass(int64_t max_prompt_tokens, int64_t max_total_tokens, int max_in_flight,
                      EngineConfig* config, bool prefix_hits = false);

// For scoring on prefix-cache hits: each request twice in a row, first as a one-token reproducible
// run (a whole prefill that leaves the prompt's blocks in the cache), then as given with
// reproducible off, so that it takes the cached prefix. The results of the second runs are
// those at odd indices.
std::vector<PassRequest> PrefixHitRequests(std::span<const PassRequest> requests);

// Results in request order. Errors: a Submit refused (named by index), or a request aborted.
absl::StatusOr<std::vector<PassResult>> RunPass(Engine& engine,
                                                std::span<const PassRequest> requests,
                                                const PassOptions& options);

}  // namespace sals
