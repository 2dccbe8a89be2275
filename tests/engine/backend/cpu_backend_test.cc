// CPU backend behaviour that does not need recorded references: malformed batches are refused
// without touching the cache, and logits do not depend on what else is batched.
#include "engine/backend/cpu/cpu_backend.h"

#include <memory>

#include "engine/model/weight_source.h"
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

}  // namespace
}  // namespace sals
