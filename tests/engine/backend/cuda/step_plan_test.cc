// The CUDA backend's host step planning, on the CPU: graph padding and buckets, the device order
// of decode and prefill rows, the metadata layout and contents, the SALS groups and scratch rows,
// and which changes of a step give it another graph key.
#include "engine/backend/cuda/step_plan.h"

#include <cstdint>
#include <cstring>
#include <numeric>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace sals::cuda {
namespace {

using ::testing::ElementsAre;
using ::testing::ElementsAreArray;

constexpr int kBlock = 16;

// Whether the fused SALS kernels take a group: the callbacks a test passes to PlanStep.
absl::StatusOr<bool> Never(const StepPlan&, const SalsGroupPlan&) { return false; }
absl::StatusOr<bool> Always(const StepPlan&, const SalsGroupPlan&) { return true; }

StepPlanOptions DenseOptions(bool graphs = true) {
  StepPlanOptions o;
  o.block_size = kBlock;
  o.cuda_graphs = graphs;
  return o;
}

// Two sparse layers; rank 32, 4 sinks and 8 recent tokens kept exact.
StepPlanOptions SalsOptions(bool graphs = true) {
  StepPlanOptions o = DenseOptions(graphs);
  o.num_sparse_layers = 2;
  o.storage.rank = 32;
  o.storage.sink_tokens = 4;
  o.storage.recent_tokens = 8;
  return o;
}

SalsPolicy Policy(int token_budget = 0) {
  SalsPolicy p;
  p.sink_tokens = 4;
  p.recent_tokens = 8;
  p.token_budget = token_budget;
  return p;
}

// Appends a slice of `num_tokens` new tokens after `context_len` cached ones; sequence s owns
// blocks 100 * (s + 1) + b and its tokens are 1000 * (s + 1) + j, so that every value in the
// metadata tells where it came from.
void Add(ForwardBatch* batch, int context_len, int num_tokens, SalsPolicy policy = Policy(),
         bool all_logits = false) {
  const int s = static_cast<int>(batch->seqs.size());
  SequenceSlice seq;
  seq.context_len = context_len;
  seq.num_tokens = num_tokens;
  seq.all_logits = all_logits;
  seq.exact_slot = s;
  seq.exact_valid_from = s;
  seq.policy = policy;
  for (int b = 0; b < (context_len + num_tokens + kBlock - 1) / kBlock; ++b) {
    seq.block_table.push_back(100 * (s + 1) + b);
  }
  for (int j = 0; j < num_tokens; ++j) batch->tokens.push_back(1000 * (s + 1) + j);
  batch->seqs.push_back(seq);
}

StepPlan Plan(const ForwardBatch& batch, const StepPlanOptions& options, bool greedy = false,
              SalsFastPath fast = Never) {
  absl::StatusOr<StepPlan> plan = PlanStep(batch, greedy, options, fast);
  EXPECT_TRUE(plan.ok()) << plan.status();
  return plan.ok() ? *plan : StepPlan{};
}

// The metadata as the device would read it.
class Meta {
 public:
  Meta(const ForwardBatch& batch, const StepPlan& plan, const StepPlanOptions& options)
      : plan_(plan), bytes_(plan.meta.bytes, 0xAB) {
    const absl::Status s = WriteStepMeta(batch, plan, options, bytes_);
    EXPECT_TRUE(s.ok()) << s;
  }
  template <typename T>
  std::vector<T> Get(size_t offset, int64_t count) const {
    std::vector<T> out(count);
    std::memcpy(out.data(), bytes_.data() + offset, count * sizeof(T));
    return out;
  }
  std::vector<int32_t> I32(size_t offset, int64_t count) const {
    return Get<int32_t>(offset, count);
  }
  std::vector<int64_t> I64(size_t offset, int64_t count) const {
    return Get<int64_t>(offset, count);
  }
  // Block-table row of device sequence d.
  std::vector<int32_t> Table(int d) const {
    return I32(plan_.meta.tables + d * plan_.table_stride * 4, plan_.table_stride);
  }

 private:
  const StepPlan& plan_;
  std::vector<uint8_t> bytes_;
};

TEST(StepPlanTest, GraphBatchPadsToPowersOfTwoThenSixteens) {
  EXPECT_EQ(GraphBatch(1), 1);
  EXPECT_EQ(GraphBatch(3), 4);
  EXPECT_EQ(GraphBatch(5), 8);
  EXPECT_EQ(GraphBatch(8), 8);
  EXPECT_EQ(GraphBatch(9), 16);
  EXPECT_EQ(GraphBatch(16), 16);
  EXPECT_EQ(GraphBatch(17), 32);
  EXPECT_EQ(GraphBatch(33), 48);
}

TEST(StepPlanTest, KvBucketHasSixteenStepsPerOctaveOfAtLeast256) {
  EXPECT_EQ(KvBucket(0), 0);
  EXPECT_EQ(KvBucket(1), 256);
  EXPECT_EQ(KvBucket(256), 256);
  EXPECT_EQ(KvBucket(257), 512);
  EXPECT_EQ(KvBucket(4096), 4096);
  EXPECT_EQ(KvBucket(4097), 4352);
  EXPECT_EQ(KvBucket(65537), 69632);  // steps of 65536 / 16
  for (int len = 1; len < 100000; len += 997) {
    EXPECT_GE(KvBucket(len), len);
    EXPECT_LE(KvBucket(len) - len, std::max(256, len / 16));
  }
}

TEST(StepPlanTest, MetaLayoutPacksArraysAt16ByteBoundaries) {
  // 5 tokens, 3 sequences (1 prefill), table stride 3, 5 rows.
  const MetaLayout dense = LayoutMeta(5, 3, 1, 3, 5, /*sals=*/false, 1);
  EXPECT_EQ(dense.slots, 0u);
  EXPECT_EQ(dense.tokens, 48u);     // 5 x int64 = 40, rounded up
  EXPECT_EQ(dense.positions, 80u);  // + 5 x int32 = 20 -> 32
  EXPECT_EQ(dense.kv_lens, 112u);   // + 32
  EXPECT_EQ(dense.q_starts, 128u);  // + 3 x int32 = 12 -> 16
  EXPECT_EQ(dense.tables, 144u);    // + 2 x int32 = 8 -> 16
  EXPECT_EQ(dense.rows, 192u);      // + 9 x int32 = 36 -> 48
  EXPECT_EQ(dense.bytes, 224u);     // + 5 x int32 = 20 -> 32
  EXPECT_EQ(dense.cached, 0u);
  EXPECT_EQ(dense.scratch_slots, 0u);

  const MetaLayout sals = LayoutMeta(5, 3, 1, 3, 5, /*sals=*/true, 4);
  EXPECT_EQ(sals.rows, dense.rows);  // the dense part does not move
  const std::vector<std::pair<size_t, int64_t>> regions = {
      {sals.slots, 40},        {sals.tokens, 20},         {sals.positions, 20},
      {sals.kv_lens, 12},      {sals.q_starts, 8},        {sals.tables, 36},
      {sals.rows, 20},         {sals.cached, 12},         {sals.exact_slots, 12},
      {sals.exact_valid, 12},  {sals.mat_rows, 12},       {sals.mat_ranks, 12},
      {sals.scratch_lens, 12}, {sals.scratch_tables, 48}, {sals.exact_rows, 40},
      {sals.scratch_slots, 40}};
  for (size_t i = 0; i < regions.size(); ++i) {
    EXPECT_EQ(regions[i].first % 16, 0u) << "region " << i;
    const size_t end = regions[i].first + regions[i].second;
    const size_t next = i + 1 < regions.size() ? regions[i + 1].first : sals.bytes;
    EXPECT_LE(end, next) << "region " << i << " overlaps the next";
    EXPECT_LT(next - end, 16u) << "region " << i << " leaves a gap";
  }
  EXPECT_EQ(sals.bytes % 16, 0u);
}

TEST(StepPlanTest, DecodeSlicesComeFirstAndLogitRowsKeepBatchOrder) {
  ForwardBatch batch;
  Add(&batch, 0, 5);   // 0: prefill
  Add(&batch, 20, 1);  // 1: decode
  Add(&batch, 3, 3);   // 2: prefill
  Add(&batch, 40, 1);  // 3: decode
  const StepPlanOptions options = DenseOptions();
  const StepPlan p = Plan(batch, options);
  EXPECT_FALSE(p.graph);  // prefill chunks run eagerly
  EXPECT_THAT(p.order, ElementsAre(1, 3, 0, 2));
  EXPECT_EQ(p.decode_seqs, 2);
  EXPECT_EQ(p.batch_decode, 2);
  EXPECT_EQ(p.prefill_seqs, 2);
  EXPECT_EQ(p.tokens, 10);
  EXPECT_EQ(p.max_q_len, 5);
  EXPECT_EQ(p.max_context, 3);
  EXPECT_EQ(p.table_stride, 3);  // sequence 3 covers 41 tokens
  EXPECT_EQ(p.planned_kv, 41);
  EXPECT_EQ(p.rows, 4);
  EXPECT_EQ(p.out_rows, 4);
  EXPECT_THAT(p.row_begin, ElementsAre(0, 1, 2, 3));
  EXPECT_TRUE(p.groups.empty());

  const Meta m(batch, p, options);
  EXPECT_THAT(m.I32(p.meta.tokens, 10),
              ElementsAre(2000, 4000, 1000, 1001, 1002, 1003, 1004, 3000, 3001, 3002));
  EXPECT_THAT(m.I32(p.meta.positions, 10), ElementsAre(20, 40, 0, 1, 2, 3, 4, 3, 4, 5));
  EXPECT_THAT(m.I64(p.meta.slots, 3),
              ElementsAre(201 * kBlock + 4, 402 * kBlock + 8, 100 * kBlock));
  EXPECT_THAT(m.I32(p.meta.kv_lens, 4), ElementsAre(21, 41, 5, 6));
  EXPECT_THAT(m.I32(p.meta.q_starts, 3), ElementsAre(0, 5, 8));
  EXPECT_THAT(m.Table(0), ElementsAre(200, 201, 0));
  EXPECT_THAT(m.Table(1), ElementsAre(400, 401, 402));
  EXPECT_THAT(m.Table(2), ElementsAre(100, 0, 0));
  // Each sequence's last token, in batch order: A at device rows 2..6, B 0, C 7..9, D 1.
  EXPECT_THAT(m.I32(p.meta.rows, 4), ElementsAre(6, 0, 9, 1));
}

TEST(StepPlanTest, AllLogitsRowsUnlessGreedy) {
  ForwardBatch batch;
  Add(&batch, 0, 3, Policy(), /*all_logits=*/true);
  Add(&batch, 9, 1);
  const StepPlanOptions options = DenseOptions();
  const StepPlan all = Plan(batch, options);
  EXPECT_EQ(all.out_rows, 4);
  EXPECT_THAT(all.row_begin, ElementsAre(0, 3));
  EXPECT_THAT(Meta(batch, all, options).I32(all.meta.rows, 4), ElementsAre(1, 2, 3, 0));

  const StepPlan greedy = Plan(batch, options, /*greedy=*/true);
  EXPECT_EQ(greedy.out_rows, 2);
  EXPECT_THAT(greedy.row_begin, ElementsAre(0, 1));
  EXPECT_THAT(Meta(batch, greedy, options).I32(greedy.meta.rows, 2), ElementsAre(3, 0));
}

TEST(StepPlanTest, GraphStepsPadTheBatchWithEmptyContexts) {
  ForwardBatch batch;
  Add(&batch, 20, 1);
  Add(&batch, 40, 1);
  Add(&batch, 70, 1);  // 71 tokens: 5 blocks
  const StepPlanOptions options = DenseOptions();
  const StepPlan p = Plan(batch, options);
  ASSERT_TRUE(p.graph);
  EXPECT_EQ(p.decode_seqs, 4);
  EXPECT_EQ(p.batch_decode, 3);
  EXPECT_EQ(p.tokens, 4);
  EXPECT_EQ(p.rows, 4);
  EXPECT_EQ(p.out_rows, 3);
  EXPECT_EQ(p.table_stride, 8);  // 5 blocks, rounded up to a power of two
  EXPECT_EQ(p.planned_kv, 256);  // KvBucket(71)

  const Meta m(batch, p, options);
  EXPECT_EQ(m.I32(p.meta.tokens, 4)[3], 0);
  EXPECT_EQ(m.I32(p.meta.positions, 4)[3], 0);
  EXPECT_EQ(m.I64(p.meta.slots, 4)[3], -1);  // padding K/V is not stored
  EXPECT_THAT(m.I32(p.meta.kv_lens, 4), ElementsAre(21, 41, 71, 0));
  EXPECT_THAT(m.Table(2), ElementsAre(300, 301, 302, 303, 304, 0, 0, 0));
  EXPECT_THAT(m.Table(3), ElementsAre(0, 0, 0, 0, 0, 0, 0, 0));
  EXPECT_THAT(m.I32(p.meta.rows, 4), ElementsAre(0, 1, 2, 3));
}

TEST(StepPlanTest, StepsThatAGraphCannotServeRunEagerly) {
  ForwardBatch decode;
  Add(&decode, 20, 1);
  EXPECT_TRUE(Plan(decode, DenseOptions()).graph);
  EXPECT_FALSE(Plan(decode, DenseOptions(/*graphs=*/false)).graph);

  ForwardBatch mixed = decode;
  Add(&mixed, 0, 2);
  EXPECT_FALSE(Plan(mixed, DenseOptions()).graph);

  StepPlanOptions small = DenseOptions();
  small.max_graph_batch = 2;
  ForwardBatch three = decode;
  Add(&three, 5, 1);
  EXPECT_TRUE(Plan(three, small).graph);
  Add(&three, 6, 1);
  const StepPlan eager = Plan(three, small);
  EXPECT_FALSE(eager.graph);
  EXPECT_EQ(eager.decode_seqs, 3);  // no padding
  EXPECT_EQ(eager.tokens, 3);

  // Two SALS policies: two groups, which a graph does not bake in.
  ForwardBatch policies;
  Add(&policies, 20, 1, Policy());
  Add(&policies, 20, 1, Policy(/*token_budget=*/4));
  EXPECT_FALSE(Plan(policies, SalsOptions()).graph);
  EXPECT_TRUE(Plan(policies, DenseOptions()).graph);  // policies mean nothing to a dense pool
}

TEST(StepPlanTest, PerKvHeadSelectionIsRefusedByName) {
  SalsPolicy per_head = Policy();
  per_head.selection = SalsSelection::kPerKvHead;
  ForwardBatch batch;
  Add(&batch, 10, 1, Policy());
  Add(&batch, 30, 1, per_head);
  const absl::StatusOr<StepPlan> plan = PlanStep(batch, false, SalsOptions(), Never);
  ASSERT_FALSE(plan.ok());
  EXPECT_EQ(plan.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_NE(plan.status().message().find("per_kv_head"), std::string_view::npos) << plan.status();
  EXPECT_TRUE(PlanStep(batch, false, DenseOptions(), Never).ok());  // no SALS layer: no selection
}

TEST(StepPlanTest, SalsDecodeSlicesGroupByResolvedPolicy) {
  SalsPolicy full_rank = Policy();
  full_rank.rank = 32;  // the stored rank: resolves like the default
  full_rank.score_dims = 16;
  ForwardBatch batch;
  Add(&batch, 10, 1, Policy());            // 0: group A
  Add(&batch, 30, 1, Policy(8));           // 1: group B
  Add(&batch, 0, 4, Policy());             // 2: prefill
  Add(&batch, 50, 1, full_rank);           // 3: group A
  Add(&batch, 20, 1, Policy(8));           // 4: group B
  std::vector<std::pair<int, int>> asked;  // (begin, count) of each fast-path question
  const StepPlan p = Plan(batch, SalsOptions(), false,
                          [&](const StepPlan&, const SalsGroupPlan& g) -> absl::StatusOr<bool> {
                            asked.emplace_back(g.begin, g.count);
                            return false;
                          });
  EXPECT_THAT(p.order, ElementsAre(0, 3, 1, 4, 2));
  ASSERT_EQ(p.groups.size(), 2u);
  EXPECT_EQ(p.groups[0].begin, 0);
  EXPECT_EQ(p.groups[0].count, 2);
  EXPECT_EQ(p.groups[0].planned_cached, 50);
  EXPECT_EQ(p.groups[0].policy.rank, 32);  // resolved
  EXPECT_EQ(p.groups[0].policy.score_dims, 16);
  EXPECT_EQ(p.groups[0].policy.token_budget, 0);
  EXPECT_EQ(p.groups[1].begin, 2);
  EXPECT_EQ(p.groups[1].count, 2);
  EXPECT_EQ(p.groups[1].planned_cached, 30);
  EXPECT_EQ(p.groups[1].policy.token_budget, 8);
  EXPECT_THAT(asked, ElementsAre(std::pair(0, 2), std::pair(2, 2)));
}

TEST(StepPlanTest, SalsStatisticsCountAttendedAndCachedTokens) {
  // 100 cached tokens, 4 sinks, 8 recent, 1/8 of the 101-token context selected: 4 sinks + 13
  // selected + 7 recent cached tokens attended, over two sparse layers.
  ForwardBatch batch;
  Add(&batch, 100, 1);
  Add(&batch, 0, 7);  // prefill chunks count for nothing
  const StepPlan p = Plan(batch, SalsOptions());
  EXPECT_EQ(p.attended_tokens, 2 * 24);
  EXPECT_EQ(p.cached_tokens, 2 * 100);
  EXPECT_EQ(AttendedTokens(PlanSelection(Policy(), 100), 100), 25);  // the new token included
}

TEST(StepPlanTest, FallbackGroupsAndPrefillChunksGetScratchRows) {
  ForwardBatch batch;
  Add(&batch, 100, 1);  // attends 25 tokens
  Add(&batch, 40, 1);   // 4 sinks + 6 selected + 7 recent + itself = 18
  Add(&batch, 10, 6);   // prefill: 16 rows
  const StepPlanOptions options = SalsOptions();
  const StepPlan p = Plan(batch, options);
  ASSERT_EQ(p.groups.size(), 1u);
  EXPECT_FALSE(p.groups[0].fast);
  EXPECT_EQ(p.groups[0].max_rows, 25);
  EXPECT_THAT(p.scratch_len, ElementsAre(25, 18, 16));
  EXPECT_THAT(p.scratch_begin, ElementsAre(0, 32, 64));  // whole scratch blocks each
  EXPECT_EQ(p.scratch_rows, 80);
  EXPECT_EQ(p.scratch_stride, 2);  // 25 rows need two blocks
  const MetaLayout want = LayoutMeta(8, 3, 1, p.table_stride, 3, true, 2);
  EXPECT_EQ(p.meta.scratch_slots, want.scratch_slots);  // two table entries per sequence
  EXPECT_EQ(p.meta.bytes, want.bytes);

  const Meta m(batch, p, options);
  EXPECT_THAT(m.I32(p.meta.scratch_tables, 6), ElementsAre(0, 1, 2, 3, 4, 5));
  EXPECT_THAT(m.I32(p.meta.mat_rows, 3), ElementsAre(0, 32, 64));
  EXPECT_THAT(m.I32(p.meta.scratch_lens, 3), ElementsAre(25, 18, 16));
  // A decode token's post-RoPE K/V is the last of its rows; a prefill token sits at its position.
  EXPECT_THAT(m.I64(p.meta.scratch_slots, 8), ElementsAre(24, 49, 74, 75, 76, 77, 78, 79));
}

TEST(StepPlanTest, FastGroupsNeedNoScratchRows) {
  ForwardBatch batch;
  Add(&batch, 100, 1);
  Add(&batch, 40, 1);
  Add(&batch, 10, 6);
  const StepPlanOptions options = SalsOptions();
  const StepPlan p = Plan(batch, options, false, Always);
  ASSERT_EQ(p.groups.size(), 1u);
  EXPECT_TRUE(p.groups[0].fast);
  EXPECT_EQ(p.groups[0].max_rows, 0);
  EXPECT_THAT(p.scratch_len, ElementsAre(0, 0, 16));
  EXPECT_THAT(p.scratch_begin, ElementsAre(0, 0, 0));
  EXPECT_EQ(p.scratch_rows, 16);
  EXPECT_EQ(p.scratch_stride, 1);
  EXPECT_THAT(Meta(batch, p, options).I64(p.meta.scratch_slots, 3), ElementsAre(-1, -1, 10));
}

TEST(StepPlanTest, GraphFallbackPadsEverySliceToTheGroupsRows) {
  ForwardBatch batch;
  Add(&batch, 100, 1);
  Add(&batch, 40, 1);
  Add(&batch, 70, 1);
  const StepPlanOptions options = SalsOptions();
  const StepPlan p = Plan(batch, options);
  ASSERT_TRUE(p.graph);
  ASSERT_EQ(p.groups.size(), 1u);
  EXPECT_EQ(p.groups[0].count, 4);             // the padding slice joins the group
  EXPECT_EQ(p.groups[0].planned_cached, 256);  // KvBucket(100)
  // Rows for a 256-token context: 4 sinks + 33 selected + 7 recent + the new token.
  EXPECT_EQ(p.groups[0].max_rows, 45);
  EXPECT_THAT(p.scratch_begin, ElementsAre(0, 48, 96, 144));
  EXPECT_EQ(p.scratch_len[3], 0);  // padding
  EXPECT_EQ(p.scratch_rows, 192);
  EXPECT_EQ(p.scratch_stride, 3);

  const Meta m(batch, p, options);
  EXPECT_THAT(m.I32(p.meta.cached, 4), ElementsAre(100, 40, 70, 0));
  EXPECT_THAT(m.I32(p.meta.exact_slots, 4), ElementsAre(0, 1, 2, 0));
  EXPECT_THAT(m.I32(p.meta.mat_ranks, 4), ElementsAre(32, 32, 32, 1));
  EXPECT_EQ(m.I64(p.meta.scratch_slots, 4)[3], -1);
}

TEST(StepPlanTest, ExactRowsKeepSinksAndTheTokensLeftInTheRecentRing) {
  SalsPolicy low_rank = Policy();
  low_rank.rank = 16;
  ForwardBatch batch;
  Add(&batch, 50, 1, low_rank);  // slot 0
  Add(&batch, 0, 20);            // slot 1: a prefill of 20 tokens
  const StepPlanOptions options = SalsOptions();
  const StepPlan p = Plan(batch, options);
  const Meta m(batch, p, options);
  const std::vector<int64_t> rows = m.I64(p.meta.exact_rows, 21);
  // 12 exact rows per slot: 4 sinks, then the ring of 8.
  EXPECT_EQ(rows[0], 0 * 12 + 4 + 50 % 8);
  std::vector<int64_t> prefill(20, -1);
  for (int pos = 0; pos < 4; ++pos) prefill[pos] = 12 + pos;            // sinks
  for (int pos = 12; pos < 20; ++pos) prefill[pos] = 12 + 4 + pos % 8;  // still in the ring
  EXPECT_THAT(std::vector<int64_t>(rows.begin() + 1, rows.end()), ElementsAreArray(prefill));
  EXPECT_THAT(m.I32(p.meta.cached, 2), ElementsAre(50, 0));
  EXPECT_THAT(m.I32(p.meta.exact_valid, 2), ElementsAre(0, 1));
  EXPECT_THAT(m.I32(p.meta.mat_ranks, 2), ElementsAre(16, 32));
}

TEST(StepPlanTest, TheFastPathSeesTheFinalPlansSequenceArrays) {
  ForwardBatch batch;
  Add(&batch, 100, 1);
  Add(&batch, 100, 6);  // 106 scratch rows: 7 table entries per sequence
  MetaLayout seen;
  const StepPlan p =
      Plan(batch, SalsOptions(), false,
           [&](const StepPlan& partial, const SalsGroupPlan&) -> absl::StatusOr<bool> {
             seen = partial.meta;
             return false;
           });
  // The views it builds read these arrays; the scratch tables grow after it answers.
  EXPECT_EQ(seen.tables, p.meta.tables);
  EXPECT_EQ(seen.kv_lens, p.meta.kv_lens);
  EXPECT_EQ(seen.cached, p.meta.cached);
  EXPECT_EQ(seen.exact_slots, p.meta.exact_slots);
  EXPECT_EQ(seen.exact_valid, p.meta.exact_valid);
  EXPECT_LT(seen.bytes, p.meta.bytes);
}

TEST(StepPlanTest, FastPathErrorsAbortThePlan) {
  ForwardBatch batch;
  Add(&batch, 100, 1);
  absl::StatusOr<StepPlan> p =
      PlanStep(batch, false, SalsOptions(), [](const StepPlan&, const SalsGroupPlan&) {
        return absl::StatusOr<bool>(absl::InternalError("no device"));
      });
  EXPECT_EQ(p.status().code(), absl::StatusCode::kInternal);
}

TEST(StepPlanTest, WriteStepMetaRefusesAShortBuffer) {
  ForwardBatch batch;
  Add(&batch, 3, 2);
  const StepPlan p = Plan(batch, DenseOptions());
  std::vector<uint8_t> meta(p.meta.bytes - 1);
  EXPECT_EQ(WriteStepMeta(batch, p, DenseOptions(), meta).code(),
            absl::StatusCode::kInvalidArgument);
}

// Graph keys of SALS decode steps of one group.
class GraphKeyTest : public ::testing::Test {
 protected:
  std::vector<int64_t> Key(const ForwardBatch& batch, bool fast = false,
                           std::vector<int64_t> kernel_fields = {1, 2}) {
    const StepPlan p = Plan(
        batch, SalsOptions(), false,
        [fast](const StepPlan&, const SalsGroupPlan&) -> absl::StatusOr<bool> { return fast; });
    EXPECT_TRUE(p.graph);
    return GraphKey(p, kernel_fields);
  }
  static ForwardBatch Decode(std::vector<int> contexts, SalsPolicy policy = Policy()) {
    ForwardBatch batch;
    for (int c : contexts) Add(&batch, c, 1, policy);
    return batch;
  }
};

TEST_F(GraphKeyTest, MatchesWhenOnlyUploadedMetadataDiffers) {
  const std::vector<int64_t> key = Key(Decode({100, 40, 70}));
  // Other tokens, blocks, exact slots and contexts in the same bucket and table stride.
  ForwardBatch other = Decode({120, 33, 71});
  for (int32_t& t : other.tokens) t += 7;
  for (SequenceSlice& s : other.seqs) {
    for (int32_t& b : s.block_table) b += 5;
    s.exact_slot += 2;
    s.exact_valid_from = 9;
  }
  EXPECT_EQ(Key(other), key);
  EXPECT_EQ(Key(Decode({100, 40, 70, 60})), key);  // a fourth slice takes the padding's place
}

TEST_F(GraphKeyTest, DenseStepsKeyOnShapesAndTheKernelsPlans) {
  const auto key = [](const ForwardBatch& batch, std::vector<int64_t> kernel_fields) {
    const StepPlan p = Plan(batch, DenseOptions());
    EXPECT_TRUE(p.graph);
    return GraphKey(p, kernel_fields);
  };
  EXPECT_EQ(key(Decode({100, 40}), {1, 64}), key(Decode({90, 20}), {1, 64}));
  EXPECT_NE(key(Decode({100, 40}), {1, 64}), key(Decode({100, 40}), {2, 64}));
  EXPECT_NE(key(Decode({100, 40}), {1, 64}), key(Decode({100, 40, 1}), {1, 64}));
}

TEST_F(GraphKeyTest, DiffersWhenALaunchDependsOnTheChange) {
  const std::vector<int64_t> key = Key(Decode({100, 40, 70}));
  EXPECT_NE(Key(Decode({100, 40, 70, 60, 50})), key);  // padded batch 8, not 4
  EXPECT_NE(Key(Decode({100, 40, 130})), key);         // 9 blocks: table stride 16, not 8
  // 257 and 261 tokens: both 17 blocks (table stride 32), planned for 256 and 512 cached tokens.
  EXPECT_NE(Key(Decode({256, 40, 70})), Key(Decode({260, 40, 70})));
  // Policies, on the fast path (no scratch rows that the policy would change too).
  const std::vector<int64_t> fast = Key(Decode({100, 40, 70}), /*fast=*/true);
  EXPECT_NE(Key(Decode({100, 40, 70}, Policy(8)), true), fast);
  SalsPolicy rank16 = Policy();
  rank16.rank = 16;
  rank16.score_dims = 16;  // as the default resolves
  EXPECT_NE(Key(Decode({100, 40, 70}, rank16), true), fast);
  SalsPolicy select_all = Policy();
  select_all.select_all = true;
  EXPECT_NE(Key(Decode({100, 40, 70}, select_all), true), fast);
  EXPECT_NE(Key(Decode({100, 40, 70}), /*fast=*/true), key);
  EXPECT_NE(Key(Decode({100, 40, 70}), false, {1, 3}), key);  // the kernels planned otherwise
}

}  // namespace
}  // namespace sals::cuda
