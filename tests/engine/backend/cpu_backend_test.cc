// CPU backend behaviour that does not need recorded references: malformed batches are refused
// without touching the cache, and logits do not depend on what else is batched.
#include "engine/backend/cpu/cpu_backend.h"

#include <omp.h>

#include <memory>
#include <vector>

#include "engine/model/weight_source.h"
#include "engine/sampling/sampler.h"
#include "gtest/gtest.h"

namespace sals {
namespace {

KvPoolConfig Pool(int num_blocks, int block_size) {
  KvPoolConfig pool;
  pool.num_blocks = num_blocks;
  pool.block_size = block_size;
  return pool;
}

SequenceSlice Slice(int32_t num_tokens, int32_t context_len, std::vector<int32_t> table,
                    bool all_logits) {
  SequenceSlice s;
  s.num_tokens = num_tokens;
  s.context_len = context_len;
  s.block_table = std::move(table);
  s.all_logits = all_logits;
  return s;
}

std::unique_ptr<Backend> TinyBackend(int num_blocks, int block_size) {
  auto config = SyntheticModelConfig("tiny");
  EXPECT_TRUE(config.ok());
  auto weights = MakeRandomWeights(*config, 42);
  auto backend = CreateCpuBackend(*config, *weights, Pool(num_blocks, block_size));
  EXPECT_TRUE(backend.ok()) << backend.status();
  return backend.ok() ? std::move(*backend) : nullptr;
}

ForwardBatch OneSequence(std::vector<int32_t> tokens, int context_len, std::vector<int32_t> table) {
  ForwardBatch b;
  b.seqs.push_back(
      Slice(static_cast<int32_t>(tokens.size()), context_len, std::move(table), false));
  b.tokens = std::move(tokens);
  return b;
}

TEST(CpuBackendTest, RejectsMalformedBatches) {
  auto backend = TinyBackend(4, 4);
  ASSERT_NE(backend, nullptr);
  ForwardOutput out;
  // Table too short for 5 tokens at block size 4.
  EXPECT_EQ(backend->Forward(OneSequence({1, 2, 3, 4, 5}, 0, {0}), &out).code(),
            absl::StatusCode::kInvalidArgument);
  // Block outside the pool.
  EXPECT_EQ(backend->Forward(OneSequence({1}, 0, {4}), &out).code(),
            absl::StatusCode::kInvalidArgument);
  // Token outside the vocabulary.
  EXPECT_EQ(backend->Forward(OneSequence({backend->config().vocab_size}, 0, {0}), &out).code(),
            absl::StatusCode::kInvalidArgument);
  ForwardBatch mismatch = OneSequence({1, 2}, 0, {0});
  mismatch.tokens.push_back(3);
  EXPECT_EQ(backend->Forward(mismatch, &out).code(), absl::StatusCode::kInvalidArgument);
}

TEST(CpuBackendTest, RejectsEmptyPool) {
  auto config = SyntheticModelConfig("tiny");
  ASSERT_TRUE(config.ok());
  auto weights = MakeRandomWeights(*config, 1);
  EXPECT_FALSE(CreateCpuBackend(*config, *weights, Pool(0, 16)).ok());
}

TEST(CpuBackendTest, LogitsIndependentOfBatchCompanions) {
  auto alone = TinyBackend(8, 4);
  auto batched = TinyBackend(8, 4);
  ASSERT_NE(alone, nullptr);
  ASSERT_NE(batched, nullptr);
  ForwardOutput a, b;
  ASSERT_TRUE(alone->Forward(OneSequence({5, 9, 11, 3, 7, 2}, 0, {1, 0}), &a).ok());
  ForwardBatch both = OneSequence({5, 9, 11, 3, 7, 2}, 0, {1, 0});
  both.seqs.push_back(Slice(3, 0, {2}, true));
  both.tokens.insert(both.tokens.end(), {100, 200, 300});
  ASSERT_TRUE(batched->Forward(both, &b).ok());
  ASSERT_EQ(b.row_begin, (std::vector<int32_t>{0, 1}));
  ASSERT_EQ(b.logits.size(), 4u * alone->config().vocab_size);
  for (int i = 0; i < alone->config().vocab_size; ++i) {
    EXPECT_NEAR(a.logits[i], b.logits[i], 1e-5f * (1.0f + std::abs(a.logits[i])));
  }
}

TEST(CpuBackendTest, ForwardSampleDrawsFromEachSequencesLastRow) {
  auto plain = TinyBackend(8, 4);
  auto sampling = TinyBackend(8, 4);
  ASSERT_NE(plain, nullptr);
  ASSERT_NE(sampling, nullptr);
  ForwardBatch batch = OneSequence({5, 9, 11, 3, 7, 2}, 0, {1, 0});
  batch.seqs.push_back(Slice(3, 0, {2}, /*all_logits=*/true));
  batch.tokens.insert(batch.tokens.end(), {100, 200, 300});
  batch.seqs.push_back(Slice(2, 0, {3}, false));
  batch.tokens.insert(batch.tokens.end(), {4, 8});
  ForwardOutput logits;
  ASSERT_TRUE(plain->Forward(batch, &logits).ok());

  RowSampling greedy, hot;
  hot.temperature = 1.5f;
  hot.top_p = 0.9f;
  hot.uniform = 0.37;
  hot.logprobs = 2;
  const std::vector<const RowSampling*> rows = {&hot, nullptr, &greedy};
  std::vector<SampleResult> results;
  ForwardOutput out;
  ASSERT_TRUE(sampling->ForwardSample(batch, rows, &results, &out).ok());
  ASSERT_EQ(results.size(), 3u);
  const int vocab = plain->config().vocab_size;
  auto last_row = [&](int seq) {
    const int row =
        logits.row_begin[seq] + (batch.seqs[seq].all_logits ? batch.seqs[seq].num_tokens - 1 : 0);
    return std::vector<float>(logits.logits.begin() + row * vocab,
                              logits.logits.begin() + (row + 1) * vocab);
  };
  std::vector<float> row0 = last_row(0), row2 = last_row(2);
  const SampleResult want0 = SampleRow(row0, hot);
  EXPECT_EQ(results[0].token, want0.token);
  EXPECT_EQ(results[0].logprob, want0.logprob);
  EXPECT_EQ(results[0].top.size(), 2u);
  EXPECT_EQ(results[2].token, SampleRow(row2, greedy).token);
  EXPECT_EQ(results[1].token, 0);  // not sampled: left default

  const std::vector<const RowSampling*> too_few = {&hot};
  EXPECT_EQ(sampling->ForwardSample(batch, too_few, &results, &out).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(CpuBackendTest, NumThreadsSetsTheCallersOpenMpThreads) {
  auto config = SyntheticModelConfig("tiny");
  ASSERT_TRUE(config.ok());
  auto weights = MakeRandomWeights(*config, 42);
  CpuBackendOptions options;
  options.num_threads = 1;
  auto backend = CreateCpuBackend(*config, *weights, Pool(4, 4), options);
  ASSERT_TRUE(backend.ok()) << backend.status();
  ForwardOutput out;
  ASSERT_TRUE((*backend)->Forward(OneSequence({1, 2}, 0, {0}), &out).ok());
  EXPECT_EQ(omp_get_max_threads(), 1);
}

}  // namespace
}  // namespace sals
