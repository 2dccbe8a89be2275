// Scheduler: token budget and running-first order, chunked prefill, mixed decode and prefill,
// preemption of the newest sequence with every sequence still finishing with the right tokens,
// abort and finish returning every block, exact slots, prefix reuse, and rejections. A fake
// engine drives it: it validates each ForwardBatch as a backend would, keeps a fake KV pool (the
// token id written at each block position) to check every step reads what earlier steps wrote,
// and "samples" a token that depends only on the sequence and position, so recomputation after
// preemption must reproduce the same output.
#include "engine/sched/scheduler.h"

#include <algorithm>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <vector>

#include "engine/backend/batch_validation.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace sals {
namespace {

constexpr int kVocab = 1000;

int32_t FakeToken(uint64_t id, int32_t position) {
  return static_cast<int32_t>((id * 7919 + static_cast<uint64_t>(position) * 104729) % kVocab);
}

std::vector<int32_t> Prompt(int32_t n, int32_t first = 0) {
  std::vector<int32_t> v(n);
  for (int32_t i = 0; i < n; ++i) v[i] = (first + i) % kVocab;
  return v;
}

class FakeEngine {
 public:
  explicit FakeEngine(const SchedulerConfig& config) {
    auto sched = Scheduler::Create(config);
    EXPECT_TRUE(sched.ok()) << sched.status();
    sched_ = *std::move(sched);
    model_.vocab_size = kVocab;
    pool_.num_blocks = config.num_blocks;
    pool_.block_size = config.block_size;
    pool_.max_sequences = config.max_sequences;
    kv_.assign(static_cast<size_t>(config.num_blocks) * config.block_size, -1);
  }

  Sequence* Add(std::vector<int32_t> prompt, int32_t max_tokens) {
    auto seq = std::make_unique<Sequence>(next_id_++, std::move(prompt), max_tokens);
    Sequence* ptr = seq.get();
    EXPECT_TRUE(TryAdd(std::move(seq)).ok());
    return ptr;
  }

  // Keeps `seq` alive (and watched) whether the scheduler takes it or not.
  absl::Status TryAdd(std::unique_ptr<Sequence> seq) {
    const absl::Status st = sched_->Add(seq.get());
    seqs_.push_back(std::move(seq));
    return st;
  }

  // One step with the checks every step must pass; returns the plan (its pointers stay valid).
  StepPlan Step() {
    const SchedulerConfig& c = sched_->config();
    std::vector<const Sequence*> running_before;
    std::set<const Sequence*> decodes_before;
    for (const auto& s : seqs_) {
      if (s->status != SequenceStatus::kRunning) continue;
      running_before.push_back(s.get());
      if (IsDecode(*s)) decodes_before.insert(s.get());
    }
    StepPlan plan = sched_->Schedule();

    // Budget, caps, order: running sequences (by arrival) before the admitted ones.
    int32_t total = 0;
    for (const ScheduledSequence& s : plan.seqs) total += s.num_tokens;
    EXPECT_EQ(total, plan.num_batched_tokens);
    EXPECT_LE(total, c.max_num_batched_tokens);
    // Decodes first: every running decode gets its token while the step budget has room for
    // them all; prefill chunks fill the prefill budget, and only as many sequences prefill as
    // the partial-prefill cap allows.
    int32_t decodes = 0, prefills = 0;
    for (const ScheduledSequence& s : plan.seqs) {
      if (decodes_before.contains(s.seq)) {
        EXPECT_EQ(s.num_tokens, 1);
        ++decodes;
      } else {
        ++prefills;
      }
    }
    if (plan.num_preempted == 0) {
      EXPECT_EQ(decodes, std::min<int32_t>(static_cast<int32_t>(decodes_before.size()),
                                           c.max_num_batched_tokens));
    }
    EXPECT_EQ(plan.num_prefill_tokens, total - decodes);
    if (c.max_prefill_tokens > 0) {
      EXPECT_LE(plan.num_prefill_tokens, c.max_prefill_tokens);
    }
    if (c.max_num_partial_prefills > 0) {
      EXPECT_LE(prefills, c.max_num_partial_prefills);
      int32_t prefilling = 0;
      for (const auto& seq : seqs_) {
        prefilling += seq->status == SequenceStatus::kRunning && !IsDecode(*seq) &&
                      seq->num_computed_tokens < seq->num_tokens();
      }
      EXPECT_LE(prefilling, c.max_num_partial_prefills);
    }
    EXPECT_LE(sched_->stats().num_running, c.max_num_seqs);
    const size_t num_old = plan.seqs.size() - plan.num_admitted;
    for (size_t i = 0; i < plan.seqs.size(); ++i) {
      const Sequence* seq = plan.seqs[i].seq;
      const bool was_running = std::count(running_before.begin(), running_before.end(), seq) > 0;
      EXPECT_EQ(was_running, i < num_old) << "entry " << i;
      if (i > 0) {
        EXPECT_GT(seq->arrival, plan.seqs[i - 1].seq->arrival);
      }
      EXPECT_EQ(seq->status, SequenceStatus::kRunning);
      EXPECT_GT(plan.seqs[i].num_tokens, 0);
      if (c.max_prefill_chunk > 0) {
        EXPECT_LE(plan.seqs[i].num_tokens, c.max_prefill_chunk);
      }
    }
    // Preemption takes the newest running sequences.
    uint64_t newest_kept = 0, oldest_preempted = UINT64_MAX;
    int preempted = 0;
    for (const Sequence* seq : running_before) {
      if (seq->status == SequenceStatus::kWaiting) {
        ++preempted;
        oldest_preempted = std::min(oldest_preempted, seq->arrival);
        EXPECT_TRUE(seq->block_table.empty());
        EXPECT_EQ(seq->num_computed_tokens, 0);
      } else {
        newest_kept = std::max(newest_kept, seq->arrival);
      }
    }
    EXPECT_EQ(preempted, plan.num_preempted);
    if (preempted > 0) {
      EXPECT_LT(newest_kept, oldest_preempted);
      EXPECT_EQ(plan.num_admitted, 0);
    }
    // Exact slots: distinct among running sequences.
    if (c.max_sequences > 0) {
      std::set<int32_t> slots;
      for (const auto& s : seqs_) {
        if (s->status != SequenceStatus::kRunning) continue;
        EXPECT_GE(s->exact_slot, 0);
        EXPECT_LT(s->exact_slot, c.max_sequences);
        EXPECT_TRUE(slots.insert(s->exact_slot).second);
      }
    }

    BuildForwardBatch(plan, &batch_);
    EXPECT_TRUE(ValidateForwardBatch(batch_, model_, pool_).ok());
    std::vector<int32_t> sampled(plan.seqs.size(), -1);
    Forward(plan, &sampled);
    EXPECT_TRUE(sched_->Postprocess(plan, sampled).ok());
    return plan;
  }

  // Steps until nothing is left; false when it takes more than `max_steps`.
  bool RunToCompletion(int max_steps) {
    for (int i = 0; i < max_steps && sched_->has_unfinished(); ++i) Step();
    return !sched_->has_unfinished();
  }

  // Every sequence finished by length has exactly the tokens the fake sampler gives.
  void ExpectOutputs() const {
    for (const auto& s : seqs_) {
      if (s->status != SequenceStatus::kFinishedLength) continue;
      ASSERT_EQ(s->num_output_tokens(), s->max_tokens);
      for (int32_t k = 0; k < s->max_tokens; ++k) {
        EXPECT_EQ(s->output_tokens()[k], FakeToken(s->id, s->num_prompt_tokens + k));
      }
    }
  }

  void ExpectPoolReleased() const {
    const BlockUsage u = sched_->block_manager().usage();
    EXPECT_EQ(u.used, 0);
    EXPECT_EQ(u.free + u.evictable, u.num_blocks);
  }

  Scheduler& sched() { return *sched_; }

 private:
  // Checks the batch against the fake KV pool, writes the new tokens' "KV" and samples.
  void Forward(const StepPlan& plan, std::vector<int32_t>* sampled) {
    const BlockManager& bm = sched_->block_manager();
    size_t token = 0;
    for (size_t i = 0; i < plan.seqs.size(); ++i) {
      const SequenceSlice& slice = batch_.seqs[i];
      const Sequence& seq = *plan.seqs[i].seq;
      EXPECT_EQ(slice.exact_slot, seq.exact_slot);
      // The cached context is what earlier steps (or the shared prefix's owner) wrote.
      for (int32_t p = 0; p < slice.context_len; ++p) {
        ASSERT_EQ(kv_[Slot(slice, p)], seq.token_ids[p]) << "seq " << seq.id << " pos " << p;
      }
      for (int32_t j = 0; j < slice.num_tokens; ++j, ++token) {
        const int32_t p = slice.context_len + j;
        ASSERT_EQ(batch_.tokens[token], seq.token_ids[p]);
        const int32_t block = slice.block_table[p / pool_.block_size];
        ASSERT_EQ(bm.ref_count(block), 1) << "writing into a shared block";
        ASSERT_FALSE(bm.is_cached(block)) << "writing into a cached block";
        kv_[Slot(slice, p)] = seq.token_ids[p];
      }
      if (plan.seqs[i].sample) (*sampled)[i] = FakeToken(seq.id, seq.num_tokens());
      EXPECT_EQ(plan.seqs[i].sample, slice.context_len + slice.num_tokens == seq.num_tokens());
    }
  }

  size_t Slot(const SequenceSlice& slice, int32_t pos) const {
    return static_cast<size_t>(slice.block_table[pos / pool_.block_size]) * pool_.block_size +
           pos % pool_.block_size;
  }

  std::unique_ptr<Scheduler> sched_;
  ModelConfig model_;
  KvPoolConfig pool_;
  std::vector<int32_t> kv_;
  std::vector<std::unique_ptr<Sequence>> seqs_;
  uint64_t next_id_ = 0;
  ForwardBatch batch_;
};

SchedulerConfig SmallConfig() {
  SchedulerConfig c;
  c.max_num_seqs = 8;
  c.max_num_batched_tokens = 32;
  c.block_size = 4;
  c.num_blocks = 64;
  return c;
}

TEST(SchedulerTest, ChunkedPrefillThenDecode) {
  FakeEngine e(SmallConfig());
  Sequence* seq = e.Add(Prompt(100), 3);
  for (const int32_t chunk : {32, 32, 32}) {
    const StepPlan plan = e.Step();
    ASSERT_EQ(plan.seqs.size(), 1u);
    EXPECT_EQ(plan.seqs[0].num_tokens, chunk);
    EXPECT_FALSE(plan.seqs[0].sample);
  }
  StepPlan plan = e.Step();
  EXPECT_EQ(plan.seqs[0].num_tokens, 4);
  EXPECT_TRUE(plan.seqs[0].sample);
  EXPECT_EQ(seq->num_output_tokens(), 1);
  plan = e.Step();
  EXPECT_EQ(plan.seqs[0].num_tokens, 1);
  EXPECT_EQ(plan.seqs[0].context_len, 100);
  e.Step();
  EXPECT_EQ(seq->status, SequenceStatus::kFinishedLength);
  EXPECT_FALSE(e.sched().has_unfinished());
  e.ExpectOutputs();
  e.ExpectPoolReleased();
}

TEST(SchedulerTest, MaxPrefillChunkCapsEachChunk) {
  SchedulerConfig c = SmallConfig();
  c.max_prefill_chunk = 10;
  FakeEngine e(c);
  e.Add(Prompt(25), 2);
  e.Add(Prompt(25, 500), 2);
  const StepPlan plan = e.Step();
  ASSERT_EQ(plan.seqs.size(), 2u);
  EXPECT_EQ(plan.seqs[0].num_tokens, 10);
  EXPECT_EQ(plan.seqs[1].num_tokens, 10);
  ASSERT_TRUE(e.RunToCompletion(100));
  e.ExpectOutputs();
}

TEST(SchedulerTest, DecodesRunFirstAndPrefillsFillTheRest) {
  FakeEngine e(SmallConfig());
  Sequence* a = e.Add(Prompt(5), 50);
  Sequence* b = e.Add(Prompt(6, 100), 50);
  e.Step();  // both prefills fit: 11 tokens
  Sequence* c = e.Add(Prompt(70, 200), 5);
  StepPlan plan = e.Step();
  ASSERT_EQ(plan.seqs.size(), 3u);
  EXPECT_EQ(plan.seqs[0].seq, a);
  EXPECT_EQ(plan.seqs[0].num_tokens, 1);
  EXPECT_EQ(plan.seqs[1].seq, b);
  EXPECT_EQ(plan.seqs[1].num_tokens, 1);
  EXPECT_EQ(plan.seqs[2].seq, c);
  EXPECT_EQ(plan.seqs[2].num_tokens, 30);  // the budget left
  EXPECT_EQ(plan.num_batched_tokens, 32);
  plan = e.Step();  // c is running now: still after a and b
  EXPECT_EQ(plan.seqs[2].seq, c);
  EXPECT_EQ(plan.seqs[2].context_len, 30);
  EXPECT_EQ(plan.num_admitted, 0);
  ASSERT_TRUE(e.RunToCompletion(200));
  e.ExpectOutputs();
  e.ExpectPoolReleased();
}

// A 32K-token prompt arriving while 8 streams decode: every step still carries all 8 decodes,
// the prompt's chunks fill exactly the per-step prefill budget (the decodes are not counted in
// it), and the prompt reaches its first token after ceil(32768 / budget) steps.
TEST(SchedulerTest, LongPromptBesideDecodesKeepsEveryDecodeWithinThePrefillBudget) {
  constexpr int32_t kPrompt = 32768;
  constexpr int32_t kStreams = 8;
  for (const int32_t budget : {2048, 8192, 5000}) {
    SCOPED_TRACE(::testing::Message() << "max_prefill_tokens=" << budget);
    SchedulerConfig c;
    c.max_num_seqs = 16;
    c.max_num_batched_tokens = 16384;
    c.max_prefill_tokens = budget;
    c.block_size = 16;
    c.num_blocks = kPrompt / 16 + 64;
    FakeEngine e(c);
    std::vector<Sequence*> streams;
    for (int i = 0; i < kStreams; ++i) streams.push_back(e.Add(Prompt(5, 10 * i), 100));
    e.Step();  // the streams' prompts
    for (const Sequence* s : streams) ASSERT_EQ(s->num_output_tokens(), 1);
    Sequence* prompt = e.Add(Prompt(kPrompt, 3), 4);
    int steps = 0;
    while (prompt->num_output_tokens() == 0 && steps < 100) {
      const StepPlan plan = e.Step();
      ++steps;
      ASSERT_EQ(plan.seqs.size(), kStreams + 1u);
      for (int i = 0; i < kStreams; ++i) {
        EXPECT_EQ(plan.seqs[i].seq, streams[i]);
        EXPECT_EQ(plan.seqs[i].num_tokens, 1);
        EXPECT_TRUE(plan.seqs[i].sample);
      }
      EXPECT_EQ(plan.seqs[kStreams].seq, prompt);
      EXPECT_EQ(plan.seqs[kStreams].num_tokens,
                std::min(budget, kPrompt - plan.seqs[kStreams].context_len));
      EXPECT_EQ(plan.num_prefill_tokens, plan.seqs[kStreams].num_tokens);
      EXPECT_EQ(plan.num_batched_tokens, kStreams + plan.num_prefill_tokens);
    }
    EXPECT_EQ(steps, (kPrompt + budget - 1) / budget);
    for (const Sequence* s : streams) EXPECT_EQ(s->num_output_tokens(), 1 + steps);
    ASSERT_TRUE(e.RunToCompletion(200));
    e.ExpectOutputs();
    e.ExpectPoolReleased();
  }
}

// Without a prefill budget the prefill takes what the step budget leaves after the decodes.
TEST(SchedulerTest, WithoutAPrefillBudgetPrefillsFillTheStepBudget) {
  SchedulerConfig c = SmallConfig();  // 32 tokens a step
  FakeEngine e(c);
  for (int i = 0; i < 3; ++i) e.Add(Prompt(2, 10 * i), 20);
  e.Step();
  e.Add(Prompt(100, 500), 2);
  const StepPlan plan = e.Step();
  EXPECT_EQ(plan.num_batched_tokens, 32);
  EXPECT_EQ(plan.num_prefill_tokens, 29);
}

// The prefill budget, the chunk cap and the partial-prefill cap together: a third prompt waits
// in the queue while two prefill, though the prefill budget has room for it, and the decodes
// never wait.
TEST(SchedulerTest, PartialPrefillCapQueuesFurtherPrompts) {
  SchedulerConfig c = SmallConfig();
  c.max_num_batched_tokens = 64;
  c.max_prefill_tokens = 40;
  c.max_prefill_chunk = 16;
  c.max_num_partial_prefills = 2;
  FakeEngine e(c);
  Sequence* d = e.Add(Prompt(3), 30);
  e.Step();  // d decodes from now on
  Sequence* a = e.Add(Prompt(40, 100), 2);
  Sequence* b = e.Add(Prompt(40, 200), 2);
  Sequence* f = e.Add(Prompt(4, 300), 2);
  for (const int32_t chunk : {16, 16, 8}) {
    const StepPlan plan = e.Step();
    ASSERT_EQ(plan.seqs.size(), 3u);
    EXPECT_EQ(plan.seqs[0].seq, d);
    EXPECT_EQ(plan.seqs[0].num_tokens, 1);
    EXPECT_EQ(plan.seqs[1].seq, a);
    EXPECT_EQ(plan.seqs[1].num_tokens, chunk);
    EXPECT_EQ(plan.seqs[2].seq, b);
    EXPECT_EQ(plan.seqs[2].num_tokens, chunk);
    EXPECT_EQ(f->status, SequenceStatus::kWaiting);  // two prefill already
  }
  // a and b decode now: f's turn.
  const StepPlan plan = e.Step();
  EXPECT_EQ(plan.num_admitted, 1);
  EXPECT_EQ(plan.num_prefill_tokens, 4);
  EXPECT_EQ(plan.num_batched_tokens, 7);
  ASSERT_TRUE(e.RunToCompletion(100));
  e.ExpectOutputs();
  e.ExpectPoolReleased();
}

TEST(SchedulerTest, MaxPrefillChunkNamesTheLimitingKey) {
  SchedulerConfig c = SmallConfig();
  const char* key = nullptr;
  EXPECT_EQ(MaxPrefillChunk(c, &key), 32);
  EXPECT_STREQ(key, "max_num_batched_tokens");
  c.max_prefill_tokens = 20;
  EXPECT_EQ(MaxPrefillChunk(c, &key), 20);
  EXPECT_STREQ(key, "max_prefill_tokens");
  c.max_prefill_chunk = 12;
  EXPECT_EQ(MaxPrefillChunk(c, &key), 12);
  EXPECT_STREQ(key, "max_prefill_chunk");
}

TEST(SchedulerTest, RunningCapAndFcfsAdmission) {
  SchedulerConfig c = SmallConfig();
  c.max_num_seqs = 2;
  FakeEngine e(c);
  Sequence* a = e.Add(Prompt(3), 4);
  Sequence* b = e.Add(Prompt(3, 10), 4);
  Sequence* d = e.Add(Prompt(3, 20), 4);
  const StepPlan plan = e.Step();
  EXPECT_EQ(plan.num_admitted, 2);
  EXPECT_EQ(a->status, SequenceStatus::kRunning);
  EXPECT_EQ(b->status, SequenceStatus::kRunning);
  EXPECT_EQ(d->status, SequenceStatus::kWaiting);
  EXPECT_EQ(e.sched().stats().num_waiting, 1);
  ASSERT_TRUE(e.RunToCompletion(100));
  e.ExpectOutputs();
}

TEST(SchedulerTest, PreemptsNewestWhenPoolRunsOutAndEveryoneFinishes) {
  SchedulerConfig c = SmallConfig();
  c.num_blocks = 24;  // 96 tokens for 6 sequences growing to 40 tokens each
  c.enable_prefix_caching = false;
  FakeEngine e(c);
  for (int i = 0; i < 6; ++i) e.Add(Prompt(8, 100 * i), 32);
  ASSERT_TRUE(e.RunToCompletion(2000));
  EXPECT_GT(e.sched().stats().num_preemptions, 0);
  e.ExpectOutputs();
  e.ExpectPoolReleased();
}

TEST(SchedulerTest, RandomWorkloadsAlwaysFinish) {
  int64_t preemptions = 0, hit_tokens = 0;
  for (uint32_t seed = 0; seed < 64; ++seed) {
    std::mt19937 rng(seed);
    auto rand = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
    SchedulerConfig c;
    c.max_num_seqs = rand(1, 8);
    c.max_num_batched_tokens = rand(1, 64);
    c.max_prefill_tokens = rand(0, 1) * rand(1, c.max_num_batched_tokens);
    c.max_prefill_chunk = rand(0, 1) * rand(1, 16);
    c.max_num_partial_prefills = rand(0, 1) * rand(1, 3);
    c.block_size = rand(1, 8);
    c.num_blocks = rand(12, 40);
    c.max_sequences = rand(0, 1) * rand(1, 6);
    c.watermark_blocks = rand(0, 3);
    c.enable_prefix_caching = rand(0, 1);
    c.prefix_cache_recompute_tokens = rand(1, 5);
    FakeEngine e(c);
    const int max_len = c.num_blocks * c.block_size;
    int added = 0;
    for (int step = 0; step < 4000 && (added < 30 || e.sched().has_unfinished()); ++step) {
      if (added < 30 && rand(0, 2) == 0) {
        // Three stems, so prefixes repeat; prompt + max_tokens never above the pool.
        const int prompt = rand(1, std::min(60, max_len - 1));
        const int max_tokens = rand(1, std::min(40, max_len - prompt));
        e.Add(Prompt(prompt, 37 * rand(0, 2)), max_tokens)->reproducible = rand(0, 3) == 0;
        ++added;
      }
      e.Step();
    }
    EXPECT_FALSE(e.sched().has_unfinished()) << "seed " << seed;
    e.ExpectOutputs();
    e.ExpectPoolReleased();
    if (::testing::Test::HasFailure()) FAIL() << "seed " << seed;
    preemptions += e.sched().stats().num_preemptions;
    hit_tokens += e.sched().stats().blocks.hit_tokens;
  }
  // The workloads exercise preemption and prefix sharing.
  EXPECT_GT(preemptions, 0);
  EXPECT_GT(hit_tokens, 0);
}

TEST(SchedulerTest, PrefixCacheServesARepeatedPrompt) {
  FakeEngine e(SmallConfig());
  Sequence* a = e.Add(Prompt(30), 2);
  ASSERT_TRUE(e.RunToCompletion(10));
  Sequence* b = e.Add(Prompt(30), 2);
  const StepPlan plan = e.Step();
  EXPECT_EQ(b->num_prefix_cached_tokens, 28);  // 7 full blocks; the last token is recomputed
  EXPECT_EQ(plan.seqs[0].context_len, 28);
  EXPECT_EQ(plan.seqs[0].num_tokens, 2);
  ASSERT_TRUE(e.RunToCompletion(10));
  EXPECT_EQ(a->output_tokens()[0], FakeToken(a->id, 30));
  const BlockUsage u = e.sched().stats().blocks;
  EXPECT_EQ(u.hit_tokens, 28);
  EXPECT_EQ(u.queried_tokens, 60);
  e.ExpectOutputs();
}

TEST(SchedulerTest, RecomputeTokensLimitReuse) {
  SchedulerConfig c = SmallConfig();
  c.prefix_cache_recompute_tokens = 9;  // e.g. a recent window
  FakeEngine e(c);
  e.Add(Prompt(30), 2);
  ASSERT_TRUE(e.RunToCompletion(10));
  Sequence* b = e.Add(Prompt(30), 2);
  e.Step();
  EXPECT_EQ(b->num_prefix_cached_tokens, 20);  // at most 30 - 9 = 21, whole blocks
}

TEST(SchedulerTest, ReproducibleSequenceTakesNoCachedPrefixAndWaitsForAWholePrefill) {
  FakeEngine e(SmallConfig());  // 32 tokens a step
  e.Add(Prompt(30), 2);
  ASSERT_TRUE(e.RunToCompletion(10));
  Sequence* a = e.Add(Prompt(5, 300), 20);
  e.Step();  // a decodes from now on: one token a step
  Sequence* b = e.Add(Prompt(30), 2);
  b->reproducible = true;
  StepPlan plan = e.Step();
  // 30 tokens fit beside a's decode: one chunk from position 0, the cached blocks ignored.
  ASSERT_EQ(plan.seqs.size(), 2u);
  EXPECT_EQ(plan.seqs[1].seq, b);
  EXPECT_EQ(plan.seqs[1].context_len, 0);
  EXPECT_EQ(plan.seqs[1].num_tokens, 30);
  EXPECT_EQ(b->num_prefix_cached_tokens, 0);
  for (int i = 0; i < 10 && !b->is_finished(); ++i) e.Step();
  ASSERT_TRUE(b->is_finished());
  ASSERT_EQ(a->status, SequenceStatus::kRunning);

  // 32 tokens do not fit beside a's decode: a reproducible prompt waits rather than be chunked,
  // and what queues behind it waits too (first come, first served).
  Sequence* c = e.Add(Prompt(32, 600), 1);
  c->reproducible = true;
  Sequence* d = e.Add(Prompt(3, 700), 1);
  plan = e.Step();
  ASSERT_EQ(plan.seqs.size(), 1u);
  EXPECT_EQ(plan.seqs[0].seq, a);
  EXPECT_EQ(c->status, SequenceStatus::kWaiting);
  EXPECT_EQ(d->status, SequenceStatus::kWaiting);
  // Once a is done, c's prompt goes in whole.
  bool whole = false;
  for (int i = 0; i < 40 && c->status == SequenceStatus::kWaiting; ++i) {
    plan = e.Step();
    for (const ScheduledSequence& s : plan.seqs) {
      if (s.seq == c) whole = s.context_len == 0 && s.num_tokens == 32;
    }
  }
  EXPECT_TRUE(whole);
  ASSERT_TRUE(e.RunToCompletion(100));
  e.ExpectOutputs();
  e.ExpectPoolReleased();

  // A prompt longer than any step still runs, chunked.
  Sequence* f = e.Add(Prompt(40, 800), 1);
  f->reproducible = true;
  EXPECT_EQ(e.Step().seqs[0].num_tokens, 32);
  ASSERT_TRUE(e.RunToCompletion(10));
  e.ExpectOutputs();
}

TEST(SchedulerTest, PreemptedReproducibleSequenceReplaysItsOutputOneTokenAStep) {
  SchedulerConfig c = SmallConfig();
  c.num_blocks = 12;  // 48 tokens for two sequences growing to 36 tokens each
  FakeEngine e(c);
  Sequence* a = e.Add(Prompt(6), 30);
  Sequence* b = e.Add(Prompt(6, 100), 30);
  b->reproducible = true;
  int32_t generated_at_preemption = -1;
  std::vector<StepPlan> after;  // b's entries from its re-admission on
  for (int step = 0; step < 200 && e.sched().has_unfinished(); ++step) {
    const int32_t generated = b->num_output_tokens();
    StepPlan plan = e.Step();
    if (plan.num_preempted > 0 && b->status == SequenceStatus::kWaiting) {
      generated_at_preemption = generated;
      after.clear();
    }
    if (generated_at_preemption < 0) continue;
    for (const ScheduledSequence& s : plan.seqs) {
      if (s.seq == b && after.size() <= static_cast<size_t>(generated_at_preemption)) {
        after.push_back(StepPlan{{s}});
      }
    }
  }
  ASSERT_FALSE(e.sched().has_unfinished());
  ASSERT_GT(generated_at_preemption, 1) << "b was meant to be preempted after some tokens";
  ASSERT_EQ(after.size(), static_cast<size_t>(generated_at_preemption) + 1);
  // The prompt in one chunk, then each generated token on its own, sampling only at the end.
  EXPECT_EQ(after[0].seqs[0].context_len, 0);
  EXPECT_EQ(after[0].seqs[0].num_tokens, 6);
  EXPECT_FALSE(after[0].seqs[0].sample);
  for (size_t i = 1; i < after.size(); ++i) {
    EXPECT_EQ(after[i].seqs[0].context_len, 6 + static_cast<int32_t>(i) - 1);
    EXPECT_EQ(after[i].seqs[0].num_tokens, 1);
    EXPECT_EQ(after[i].seqs[0].sample, i + 1 == after.size());
  }
  EXPECT_EQ(a->status, SequenceStatus::kFinishedLength);
  e.ExpectOutputs();
  e.ExpectPoolReleased();
}

TEST(SchedulerTest, AbortReturnsEveryBlockAndSlot) {
  SchedulerConfig c = SmallConfig();
  c.max_sequences = 3;
  c.max_prefill_chunk = 16;
  FakeEngine e(c);
  Sequence* a = e.Add(Prompt(10), 20);
  Sequence* b = e.Add(Prompt(40, 100), 20);  // chunked: still prefilling after a step
  Sequence* d = e.Add(Prompt(5, 200), 20);
  Sequence* f = e.Add(Prompt(5, 300), 20);
  e.Step();
  EXPECT_EQ(a->status, SequenceStatus::kRunning);
  EXPECT_EQ(b->status, SequenceStatus::kRunning);
  EXPECT_EQ(d->status, SequenceStatus::kRunning);
  EXPECT_EQ(f->status, SequenceStatus::kWaiting);  // 3 slots
  EXPECT_TRUE(e.sched().Abort(f->id).ok());
  EXPECT_EQ(f->status, SequenceStatus::kFinishedAborted);
  EXPECT_TRUE(e.sched().Abort(b->id).ok());
  EXPECT_TRUE(b->block_table.empty());
  EXPECT_EQ(b->exact_slot, -1);
  EXPECT_TRUE(e.sched().Finish(a->id).ok());
  EXPECT_EQ(a->status, SequenceStatus::kFinishedStopped);
  EXPECT_EQ(absl::StatusCode::kNotFound, e.sched().Abort(a->id).code());
  EXPECT_EQ(absl::StatusCode::kNotFound, e.sched().Finish(12345).code());
  e.Step();  // d goes on alone, in slot 2
  EXPECT_TRUE(e.sched().Abort(d->id).ok());
  EXPECT_FALSE(e.sched().has_unfinished());
  e.ExpectPoolReleased();
  // All three slots are free again.
  e.Add(Prompt(3), 2);
  e.Add(Prompt(3, 10), 2);
  e.Add(Prompt(3, 20), 2);
  EXPECT_EQ(e.Step().num_admitted, 3);
}

TEST(SchedulerTest, WatermarkHoldsBackAdmissionButNotALoneSequence) {
  SchedulerConfig c = SmallConfig();
  c.num_blocks = 10;
  c.watermark_blocks = 4;
  c.enable_prefix_caching = false;
  FakeEngine e(c);
  Sequence* a = e.Add(Prompt(36), 2);  // 9 blocks: more than 10 - 4, admitted alone
  Sequence* b = e.Add(Prompt(4, 100), 2);
  e.Step();
  EXPECT_EQ(a->status, SequenceStatus::kRunning);
  EXPECT_EQ(b->status, SequenceStatus::kWaiting);  // 1 free block would be left: under 4
  ASSERT_TRUE(e.RunToCompletion(50));
  e.ExpectOutputs();
}

TEST(SchedulerTest, RejectsSequencesThatCannotFitThePool) {
  FakeEngine e(SmallConfig());  // 64 blocks of 4 tokens
  const absl::Status st = e.TryAdd(std::make_unique<Sequence>(1000, Prompt(250), 7));
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(st.message(), ::testing::HasSubstr("the pool has 64"));
  auto fits = std::make_unique<Sequence>(1001, Prompt(250), 6);
  Sequence* fits_ptr = fits.get();
  EXPECT_TRUE(e.TryAdd(std::move(fits)).ok());
  EXPECT_EQ(e.TryAdd(std::make_unique<Sequence>(1001, Prompt(2), 6)).code(),
            absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(e.TryAdd(std::make_unique<Sequence>(1002, std::vector<int32_t>{}, 6)).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(e.TryAdd(std::make_unique<Sequence>(1003, Prompt(2), 0)).code(),
            absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(e.RunToCompletion(100));
  EXPECT_EQ(fits_ptr->status, SequenceStatus::kFinishedLength);
  e.ExpectOutputs();
}

TEST(SchedulerTest, RejectsBadConfigsAndPlans) {
  SchedulerConfig c = SmallConfig();
  c.max_num_batched_tokens = 0;
  EXPECT_THAT(Scheduler::Create(c).status().message(),
              ::testing::HasSubstr("max_num_batched_tokens must be >= 1"));
  c = SmallConfig();
  c.max_prefill_tokens = 33;
  EXPECT_THAT(
      Scheduler::Create(c).status().message(),
      ::testing::HasSubstr("max_prefill_tokens (33) must be <= max_num_batched_tokens (32)"));
  c = SmallConfig();
  c.max_num_partial_prefills = -1;
  EXPECT_THAT(Scheduler::Create(c).status().message(),
              ::testing::HasSubstr("max_num_partial_prefills must be >= 0"));
  c = SmallConfig();
  c.watermark_blocks = c.num_blocks;
  EXPECT_FALSE(Scheduler::Create(c).ok());
  c = SmallConfig();
  c.prefix_cache_recompute_tokens = 0;
  EXPECT_FALSE(Scheduler::Create(c).ok());

  FakeEngine e(SmallConfig());
  e.Add(Prompt(3), 2);
  const StepPlan plan = e.sched().Schedule();
  EXPECT_EQ(e.sched().Postprocess(plan, {}).code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace sals
