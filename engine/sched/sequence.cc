#include "engine/sched/sequence.h"

#include <utility>

namespace sals {

const char* SequenceStatusName(SequenceStatus status) {
  switch (status) {
    case SequenceStatus::kWaiting:
      return "waiting";
    case SequenceStatus::kRunning:
      return "running";
    case SequenceStatus::kFinishedStopped:
      return "finished (stopped)";
    case SequenceStatus::kFinishedLength:
      return "finished (length)";
    case SequenceStatus::kFinishedAborted:
      return "finished (aborted)";
  }
  return "unknown";
}

Sequence::Sequence(uint64_t id, std::vector<int32_t> prompt, int32_t max_tokens, SalsPolicy policy)
    : id(id),
      token_ids(std::move(prompt)),
      num_prompt_tokens(static_cast<int32_t>(token_ids.size())),
      max_tokens(max_tokens),
      policy(policy) {}

}  // namespace sals
