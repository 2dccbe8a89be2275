// Continuous batching: each step plans the running decodes first (one token each, oldest first),
// then prefill chunks (running sequences whose prompt, or recomputed context, is not all cached,
// oldest first), then admits waiting sequences first come first served, while the step's token
// budget, its prefill budget, the partial-prefill cap, the running cap, the KV blocks and the
// exact slots allow. A long prompt is thus cut into chunks that share each step with every
// running decode instead of stalling them.
// When a running sequence needs a block and none is left, the newest running sequence is
// preempted by recompute: its blocks and slot are released and it goes back to the front of the
// waiting queue to be prefilled again over its prompt and the tokens generated so far.
//
// One thread drives it: Schedule -> BuildForwardBatch -> Backend::Forward -> sample ->
// Postprocess. Add, Abort and Finish are called between steps, never between a Schedule and
// its Postprocess.
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <span>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/backend/backend.h"
#include "engine/sched/block_manager.h"
#include "engine/sched/sequence.h"
#include "engine/sched/slot_allocator.h"

namespace sals {

struct SchedulerConfig {
  int32_t max_num_seqs = 256;             // running sequences at most
  int32_t max_num_batched_tokens = 8192;  // tokens computed per step at most: decodes + prefills
  // > 0: prefill tokens per step at most (all chunks together), the decodes not counted; at most
  // max_num_batched_tokens. 0: the prefills take whatever max_num_batched_tokens leaves.
  int32_t max_prefill_tokens = 0;
  int32_t max_prefill_chunk = 0;  // > 0: tokens of one sequence's prefill chunk at most
  // > 0: sequences prefilling at once at most (running ones whose context is not all computed,
  // admissions included); the others wait in the queue.
  int32_t max_num_partial_prefills = 0;
  int32_t block_size = 16;
  int32_t num_blocks = 0;
  int32_t max_sequences = 0;  // exact slots (SALS storage); 0: sequences take no slot
  // Blocks left free when admitting next to running sequences, so their decodes do not preempt
  // at once.
  int32_t watermark_blocks = 0;
  bool enable_prefix_caching = true;
  // Trailing tokens recomputed at admission even when cached; >= 1, as the step must produce the
  // last token's logits. SALS storage keeps the exact recent tokens in the sequence's slot, not
  // in blocks, so the engine asks for at least the recent window there.
  int32_t prefix_cache_recompute_tokens = 1;
};

absl::Status ValidateSchedulerConfig(const SchedulerConfig& config);

struct ScheduledSequence {
  Sequence* seq = nullptr;
  int32_t num_tokens = 0;   // computed this step: token_ids[context_len, context_len + num_tokens)
  int32_t context_len = 0;  // tokens already cached
  bool sample = false;      // the step reaches the last token: its logits give the next one
};

struct StepPlan {
  std::vector<ScheduledSequence> seqs;  // running sequences by arrival, then admitted ones
  int32_t num_batched_tokens = 0;
  int32_t num_prefill_tokens = 0;  // of num_batched_tokens; the rest are decodes, one a sequence
  int32_t num_preempted = 0;       // this step
  int32_t num_admitted = 0;        // this step
};

struct SchedulerStats {
  int32_t num_running = 0;
  int32_t num_waiting = 0;
  int64_t num_preemptions = 0;  // since start
  BlockUsage blocks;            // includes the prefix cache's queried and hit tokens
};

class Scheduler {
 public:
  static absl::StatusOr<std::unique_ptr<Scheduler>> Create(const SchedulerConfig& config);

  // Queues a new sequence (status waiting, nothing computed). InvalidArgument for an empty
  // prompt, max_tokens < 1, or a sequence that could outgrow the whole pool (prompt +
  // max_tokens); AlreadyExists for a known id. `seq` must outlive its stay here: until Abort or
  // Finish returns, or Postprocess marks it finished.
  absl::Status Add(Sequence* seq);

  // Plans one step and reserves its blocks; may preempt (see above).
  StepPlan Schedule();

  // After the step ran: advances each planned sequence's computed tokens, registers its newly
  // full blocks in the prefix cache and, where the plan entry samples, appends sampled[i].
  // Sequences that reach max_tokens finish (status kFinishedLength) and release everything.
  // `sampled` has one entry per plan entry; entries that do not sample are ignored.
  absl::Status Postprocess(const StepPlan& plan, std::span<const int32_t> sampled);

  // Remove a waiting or running sequence, releasing its blocks and slot now. NotFound when the
  // id is not (any more) scheduled.
  absl::Status Abort(uint64_t id);   // status kFinishedAborted
  absl::Status Finish(uint64_t id);  // status kFinishedStopped

  bool has_unfinished() const { return !running_.empty() || !waiting_.empty(); }
  SchedulerStats stats() const;
  const SchedulerConfig& config() const { return config_; }
  const BlockManager& block_manager() const { return blocks_; }

 private:
  explicit Scheduler(const SchedulerConfig& config);

  // How many of `seq`'s pending tokens this step computes: all of them, within the chunk cap and
  // `budget` (for a reproducible sequence, see Sequence::reproducible).
  int32_t ChunkTokens(const Sequence& seq, int32_t budget) const;
  // Admits waiting sequences into `plan` while they fit `prefill_budget` and the caps;
  // `prefilling` counts the running sequences that prefill.
  void Admit(StepPlan* plan, int32_t* prefill_budget, int32_t prefilling);
  void FreeBlocksAndSlot(Sequence* seq);
  void Preempt(Sequence* seq);  // must be running_.back()
  // Frees blocks and slot, sets `status`, forgets the id (the caller updates the queues).
  void Release(Sequence* seq, SequenceStatus status);
  absl::Status Remove(uint64_t id, SequenceStatus status);

  SchedulerConfig config_;
  BlockManager blocks_;
  SlotAllocator slots_;
  // Running sequences sorted by arrival, newest last; waiting ones by arrival, preempted ones
  // at the front. Every waiting sequence is newer than every running one: admission is FCFS from
  // the front and preemption moves the newest running sequence there.
  std::vector<Sequence*> running_;
  std::deque<Sequence*> waiting_;
  absl::flat_hash_map<uint64_t, Sequence*> by_id_;
  uint64_t next_arrival_ = 0;
  int64_t num_preemptions_ = 0;
  std::vector<int32_t> planned_;  // Schedule's scratch: tokens per running sequence
};

// The longest prefill chunk any step can plan: max_num_batched_tokens, or max_prefill_tokens or
// max_prefill_chunk where smaller; `key` (optional) receives the name of the limiting key.
int32_t MaxPrefillChunk(const SchedulerConfig& config, const char** key = nullptr);

// True when `seq`'s next step is a decode: one pending token after at least one output (the
// rest is prefill: a prompt, or a context recomputed after a preemption).
inline bool IsDecode(const Sequence& seq) {
  return seq.num_computed_tokens + 1 == seq.num_tokens() && seq.num_output_tokens() > 0;
}

// The backend's view of a plan: the new tokens of every planned sequence in plan order, and per
// sequence its context length, the blocks covering context + new tokens, slot and policy. Reuses
// `batch`'s storage.
void BuildForwardBatch(const StepPlan& plan, ForwardBatch* batch);

}  // namespace sals
