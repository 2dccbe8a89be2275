#include "engine/sched/scheduler.h"

#include <algorithm>
#include <cstdint>
#include <utility>

#include "absl/strings/str_cat.h"

namespace sals {

absl::Status ValidateSchedulerConfig(const SchedulerConfig& c) {
  auto at_least = [](const char* name, int64_t value, int64_t min) {
    return value >= min ? absl::OkStatus()
                        : absl::InvalidArgumentError(
                              absl::StrCat(name, " must be >= ", min, ", got ", value));
  };
  for (const absl::Status& st :
       {at_least("max_num_seqs", c.max_num_seqs, 1),
        at_least("max_num_batched_tokens", c.max_num_batched_tokens, 1),
        at_least("max_prefill_tokens", c.max_prefill_tokens, 0),
        at_least("max_prefill_chunk", c.max_prefill_chunk, 0),
        at_least("max_num_partial_prefills", c.max_num_partial_prefills, 0),
        at_least("block_size", c.block_size, 1), at_least("num_blocks", c.num_blocks, 1),
        at_least("max_sequences", c.max_sequences, 0),
        at_least("watermark_blocks", c.watermark_blocks, 0),
        at_least("prefix_cache_recompute_tokens", c.prefix_cache_recompute_tokens, 1)}) {
    if (!st.ok()) return st;
  }
  if (c.max_prefill_tokens > c.max_num_batched_tokens) {
    return absl::InvalidArgumentError(absl::StrCat("max_prefill_tokens (", c.max_prefill_tokens,
                                                   ") must be <= max_num_batched_tokens (",
                                                   c.max_num_batched_tokens, ")"));
  }
  if (c.watermark_blocks >= c.num_blocks) {
    return absl::InvalidArgumentError(absl::StrCat("watermark_blocks (", c.watermark_blocks,
                                                   ") must be < num_blocks (", c.num_blocks, ")"));
  }
  return absl::OkStatus();
}

int32_t MaxPrefillChunk(const SchedulerConfig& config, const char** key) {
  int32_t limit = config.max_num_batched_tokens;
  const char* name = "max_num_batched_tokens";
  for (const auto& [value, cap_name] : {std::pair{config.max_prefill_tokens, "max_prefill_tokens"},
                                        std::pair{config.max_prefill_chunk, "max_prefill_chunk"}}) {
    if (value > 0 && value < limit) {
      limit = value;
      name = cap_name;
    }
  }
  if (key != nullptr) *key = name;
  return limit;
}

absl::StatusOr<std::unique_ptr<Scheduler>> Scheduler::Create(const SchedulerConfig& config) {
  if (absl::Status st = ValidateSchedulerConfig(config); !st.ok()) return st;
  return std::unique_ptr<Scheduler>(new Scheduler(config));
}

Scheduler::Scheduler(const SchedulerConfig& config)
    : config_(config),
      blocks_(config.num_blocks, config.block_size, config.enable_prefix_caching),
      slots_(config.max_sequences) {}

absl::Status Scheduler::Add(Sequence* seq) {
  if (seq->num_prompt_tokens < 1 || seq->num_tokens() != seq->num_prompt_tokens) {
    return absl::InvalidArgumentError(absl::StrCat(
        "sequence ", seq->id, ": ", seq->num_prompt_tokens, " prompt tokens and ",
        seq->num_output_tokens(), " output tokens; ", "needs a prompt and no output yet"));
  }
  if (seq->max_tokens < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("sequence ", seq->id, ": max_tokens must be >= 1, got ", seq->max_tokens));
  }
  if (seq->status != SequenceStatus::kWaiting || !seq->block_table.empty() ||
      seq->num_computed_tokens != 0 || seq->exact_slot != -1) {
    return absl::InvalidArgumentError(
        absl::StrCat("sequence ", seq->id, " is ", SequenceStatusName(seq->status), " with ",
                     seq->block_table.size(), " blocks and ", seq->num_computed_tokens,
                     " computed tokens; needs a fresh one"));
  }
  // A sequence that fits the pool alone always runs once the others are preempted; one that
  // does not would preempt itself forever.
  const int64_t max_len = static_cast<int64_t>(seq->num_prompt_tokens) + seq->max_tokens;
  if (blocks_.BlocksFor(max_len) > config_.num_blocks) {
    return absl::InvalidArgumentError(absl::StrCat(
        "sequence ", seq->id, ": prompt (", seq->num_prompt_tokens, " tokens) + max_tokens (",
        seq->max_tokens, ") needs ", blocks_.BlocksFor(max_len), " KV blocks of ",
        config_.block_size, " tokens; the pool has ", config_.num_blocks));
  }
  if (!by_id_.try_emplace(seq->id, seq).second) {
    return absl::AlreadyExistsError(absl::StrCat("sequence ", seq->id, " is already scheduled"));
  }
  seq->arrival = next_arrival_++;
  waiting_.push_back(seq);
  return absl::OkStatus();
}

int32_t Scheduler::ChunkTokens(const Sequence& seq, int32_t budget) const {
  int32_t n = seq.num_tokens() - seq.num_computed_tokens;
  if (seq.reproducible) {
    // The prompt alone (after a preemption the generated tokens follow), then one token a step:
    // each output token's KV is recomputed by the same kind of step that first produced it.
    n = seq.num_computed_tokens < seq.num_prompt_tokens
            ? std::min(n, seq.num_prompt_tokens - seq.num_computed_tokens)
            : std::min(n, 1);
  }
  if (config_.max_prefill_chunk > 0) n = std::min(n, config_.max_prefill_chunk);
  return std::min(n, budget);
}

namespace {

// Appends `seq`'s next `n` tokens to `plan`.
void AddToPlan(Sequence* seq, int32_t n, StepPlan* plan) {
  plan->seqs.push_back(
      {seq, n, seq->num_computed_tokens, seq->num_computed_tokens + n == seq->num_tokens()});
  plan->num_batched_tokens += n;
}

}  // namespace

StepPlan Scheduler::Schedule() {
  StepPlan plan;
  int32_t budget = config_.max_num_batched_tokens;
  planned_.assign(running_.size(), 0);
  // Decodes, oldest first. Victims come from the back (the newest), so none is planned already.
  for (size_t i = 0; i < running_.size() && budget > 0; ++i) {
    Sequence* seq = running_[i];
    if (!IsDecode(*seq)) continue;
    while (!blocks_.AppendSlot(seq)) {
      Sequence* victim = running_.back();
      Preempt(victim);
      ++plan.num_preempted;
      if (victim == seq) break;
    }
    if (seq->status != SequenceStatus::kRunning) break;
    planned_[i] = 1;
    --budget;
  }
  // Running prefills, oldest first, in what the decodes left of the prefill budget. Their block
  // tables already cover every pending token (BlockManager::Allocate).
  int32_t prefill_budget =
      config_.max_prefill_tokens > 0 ? std::min(config_.max_prefill_tokens, budget) : budget;
  int32_t prefilling = 0;
  for (size_t i = 0; i < running_.size(); ++i) {
    const Sequence& seq = *running_[i];
    if (IsDecode(seq)) continue;
    ++prefilling;
    planned_[i] = ChunkTokens(seq, prefill_budget);
    prefill_budget -= planned_[i];
    plan.num_prefill_tokens += planned_[i];
  }
  for (size_t i = 0; i < running_.size(); ++i) {
    if (planned_[i] > 0) AddToPlan(running_[i], planned_[i], &plan);
  }
  // After a preemption the pool is short: admitting now would only preempt again.
  if (plan.num_preempted == 0) Admit(&plan, &prefill_budget, prefilling);
  return plan;
}

void Scheduler::Admit(StepPlan* plan, int32_t* prefill_budget, int32_t prefilling) {
  const bool uses_slots = config_.max_sequences > 0;
  const int32_t max_prefilling =
      config_.max_num_partial_prefills > 0 ? config_.max_num_partial_prefills : INT32_MAX;
  while (!waiting_.empty() && *prefill_budget > 0 && prefilling < max_prefilling &&
         static_cast<int32_t>(running_.size()) < config_.max_num_seqs &&
         (!uses_slots || slots_.num_free() > 0)) {
    Sequence* seq = waiting_.front();
    // A reproducible sequence waits (FCFS) for a step with room for its whole prompt, unless no
    // step could ever hold it.
    if (seq->reproducible && seq->num_prompt_tokens > *prefill_budget &&
        seq->num_prompt_tokens <= MaxPrefillChunk(config_)) {
      break;
    }
    const int32_t max_cached = config_.enable_prefix_caching && !seq->reproducible
                                   ? seq->num_tokens() - config_.prefix_cache_recompute_tokens
                                   : 0;
    // Alone, a sequence may take the whole pool: Add checked that it fits.
    const int32_t reserve = running_.empty() ? 0 : config_.watermark_blocks;
    const std::optional<int32_t> cached = blocks_.Allocate(seq, max_cached, reserve);
    if (!cached) break;  // FCFS: nobody overtakes the head
    waiting_.pop_front();
    seq->num_computed_tokens = *cached;
    seq->num_prefix_cached_tokens = *cached;
    if (uses_slots) seq->exact_slot = *slots_.Allocate();
    seq->status = SequenceStatus::kRunning;
    running_.push_back(seq);
    const int32_t n = ChunkTokens(*seq, *prefill_budget);
    AddToPlan(seq, n, plan);
    plan->num_prefill_tokens += n;
    *prefill_budget -= n;
    ++prefilling;
    ++plan->num_admitted;
  }
}

void Scheduler::FreeBlocksAndSlot(Sequence* seq) {
  blocks_.Free(seq);
  if (seq->exact_slot >= 0) slots_.Free(seq->exact_slot);
  seq->exact_slot = -1;
}

void Scheduler::Preempt(Sequence* seq) {
  FreeBlocksAndSlot(seq);
  seq->num_computed_tokens = 0;
  seq->status = SequenceStatus::kWaiting;
  running_.pop_back();
  waiting_.push_front(seq);
  ++num_preemptions_;
}

absl::Status Scheduler::Postprocess(const StepPlan& plan, std::span<const int32_t> sampled) {
  if (sampled.size() != plan.seqs.size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "plan has ", plan.seqs.size(), " sequences, got ", sampled.size(), " sampled tokens"));
  }
  bool finished = false;
  for (size_t i = 0; i < plan.seqs.size(); ++i) {
    const ScheduledSequence& s = plan.seqs[i];
    Sequence* seq = s.seq;
    seq->num_computed_tokens += s.num_tokens;
    blocks_.CacheComputedBlocks(seq);
    if (!s.sample) continue;
    seq->token_ids.push_back(sampled[i]);
    if (seq->num_output_tokens() >= seq->max_tokens) {
      Release(seq, SequenceStatus::kFinishedLength);
      finished = true;
    }
  }
  if (finished) {
    std::erase_if(running_, [](const Sequence* seq) { return seq->is_finished(); });
  }
  return absl::OkStatus();
}

void Scheduler::Release(Sequence* seq, SequenceStatus status) {
  FreeBlocksAndSlot(seq);
  seq->status = status;
  by_id_.erase(seq->id);
}

absl::Status Scheduler::Remove(uint64_t id, SequenceStatus status) {
  const auto it = by_id_.find(id);
  if (it == by_id_.end()) {
    return absl::NotFoundError(absl::StrCat("sequence ", id, " is not scheduled"));
  }
  Sequence* seq = it->second;
  if (seq->status == SequenceStatus::kRunning) {
    running_.erase(std::find(running_.begin(), running_.end(), seq));
  } else {
    waiting_.erase(std::find(waiting_.begin(), waiting_.end(), seq));
  }
  Release(seq, status);
  return absl::OkStatus();
}

absl::Status Scheduler::Abort(uint64_t id) { return Remove(id, SequenceStatus::kFinishedAborted); }

absl::Status Scheduler::Finish(uint64_t id) { return Remove(id, SequenceStatus::kFinishedStopped); }

SchedulerStats Scheduler::stats() const {
  SchedulerStats s;
  s.num_running = static_cast<int32_t>(running_.size());
  s.num_waiting = static_cast<int32_t>(waiting_.size());
  s.num_preemptions = num_preemptions_;
  s.blocks = blocks_.usage();
  return s;
}

void BuildForwardBatch(const StepPlan& plan, ForwardBatch* batch) {
  batch->tokens.clear();
  batch->tokens.reserve(plan.num_batched_tokens);
  batch->seqs.resize(plan.seqs.size());
  for (size_t i = 0; i < plan.seqs.size(); ++i) {
    const ScheduledSequence& s = plan.seqs[i];
    const Sequence& seq = *s.seq;
    const auto first = seq.token_ids.begin() + s.context_len;
    batch->tokens.insert(batch->tokens.end(), first, first + s.num_tokens);
    SequenceSlice& slice = batch->seqs[i];
    slice.num_tokens = s.num_tokens;
    slice.context_len = s.context_len;
    // The whole table: a prefill chunk's table already covers the rest of its prompt.
    slice.block_table.assign(seq.block_table.begin(), seq.block_table.end());
    slice.all_logits = false;
    slice.exact_slot = seq.exact_slot;
    slice.policy = seq.policy;
  }
}

}  // namespace sals
