// Block manager: allocation and free invariants (a randomized property test), prefix sharing
// of full blocks only, LRU eviction of cached blocks, the hash chain, and hit statistics.
#include "engine/sched/block_manager.h"

#include <algorithm>
#include <map>
#include <memory>
#include <numeric>
#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace sals {
namespace {

constexpr int32_t kBlock = 4;
constexpr int32_t kNoLimit = 1 << 30;

std::vector<int32_t> Iota(int32_t n, int32_t first) {
  std::vector<int32_t> v(n);
  std::iota(v.begin(), v.end(), first);
  return v;
}

std::vector<int32_t> Concat(std::vector<int32_t> a, const std::vector<int32_t>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

// Admits `seq` and marks everything but its last token computed, as a finished prefill would.
int32_t AllocateAndCompute(BlockManager& bm, Sequence* seq) {
  const std::optional<int32_t> cached = bm.Allocate(seq, kNoLimit, 0);
  EXPECT_TRUE(cached.has_value());
  seq->num_computed_tokens = seq->num_tokens() - 1;
  bm.CacheComputedBlocks(seq);
  return cached.value_or(-1);
}

TEST(BlockManagerTest, AllocateAndFreeReturnEveryBlock) {
  BlockManager bm(8, kBlock, /*enable_prefix_caching=*/false);
  Sequence a(1, Iota(10, 0), 4);
  ASSERT_EQ(bm.Allocate(&a, kNoLimit, 0), 0);
  EXPECT_EQ(a.block_table, (std::vector<int32_t>{0, 1, 2}));
  EXPECT_EQ(bm.num_free_blocks(), 5);
  a.token_ids.insert(a.token_ids.end(), {10, 11, 12});  // 13 tokens: a 4th block
  ASSERT_TRUE(bm.AppendSlot(&a));
  EXPECT_EQ(a.block_table.size(), 4u);
  EXPECT_EQ(bm.usage().used, 4);
  bm.Free(&a);
  EXPECT_TRUE(a.block_table.empty());
  EXPECT_EQ(bm.num_free_blocks(), 8);
  EXPECT_EQ(bm.usage().evictable, 0);  // caching off: nothing is kept
}

TEST(BlockManagerTest, AllocateFailsWithoutSideEffects) {
  BlockManager bm(4, kBlock, true);
  Sequence a(1, Iota(12, 0), 4);
  ASSERT_EQ(bm.Allocate(&a, kNoLimit, 0), 0);
  Sequence b(2, Iota(6, 100), 4);  // 2 blocks, 1 free
  EXPECT_FALSE(bm.Allocate(&b, kNoLimit, 0).has_value());
  EXPECT_TRUE(b.block_table.empty());
  Sequence c(3, Iota(3, 200), 4);  // 1 block, but a reserve of 1
  EXPECT_FALSE(bm.Allocate(&c, kNoLimit, 1).has_value());
  EXPECT_EQ(bm.Allocate(&c, kNoLimit, 0), 0);
  c.token_ids.insert(c.token_ids.end(), {1, 2});  // 5 tokens: needs a block, none left
  EXPECT_FALSE(bm.AppendSlot(&c));
  EXPECT_EQ(c.block_table.size(), 1u);
  EXPECT_EQ(bm.usage().used, 4);
}

TEST(BlockManagerTest, CommonPrefixOfThreeFullBlocksIsShared) {
  BlockManager bm(32, kBlock, true);
  const std::vector<int32_t> prefix = Iota(3 * kBlock, 0);
  Sequence a(1, Concat(prefix, {50, 51}), 4);  // 3 full blocks + a partial one
  EXPECT_EQ(AllocateAndCompute(bm, &a), 0);
  Sequence b(2, Concat(prefix, {60, 61, 62, 63, 64}), 4);
  EXPECT_EQ(AllocateAndCompute(bm, &b), 3 * kBlock);
  ASSERT_EQ(b.block_table.size(), 5u);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(b.block_table[i], a.block_table[i]);
    EXPECT_EQ(bm.ref_count(a.block_table[i]), 2);
  }
  EXPECT_NE(b.block_table[3], a.block_table[3]);
  EXPECT_EQ(bm.ref_count(a.block_table[3]), 1);
  EXPECT_EQ(bm.usage().used, 4 + 2);
  EXPECT_EQ(bm.usage().hit_tokens, 3 * kBlock);
  EXPECT_EQ(bm.usage().queried_tokens, a.num_tokens() + b.num_tokens());
}

TEST(BlockManagerTest, PartialBlockIsNeverShared) {
  BlockManager bm(32, kBlock, true);
  Sequence a(1, Iota(2 * kBlock + 2, 0), 4);
  AllocateAndCompute(bm, &a);
  a.num_computed_tokens = a.num_tokens();  // even with every token computed
  bm.CacheComputedBlocks(&a);
  EXPECT_FALSE(bm.is_cached(a.block_table[2]));
  Sequence b(2, a.token_ids, 4);
  EXPECT_EQ(AllocateAndCompute(bm, &b), 2 * kBlock);
  EXPECT_NE(b.block_table[2], a.block_table[2]);
}

TEST(BlockManagerTest, LastTokenAndCallerLimitAreRecomputed) {
  BlockManager bm(32, kBlock, true);
  Sequence a(1, Iota(3 * kBlock, 0), 4);
  a.token_ids.push_back(7);  // computed through the third full block
  ASSERT_EQ(bm.Allocate(&a, kNoLimit, 0), 0);
  a.num_computed_tokens = a.num_tokens() - 1;
  bm.CacheComputedBlocks(&a);
  // Same 12 tokens: the third block holds the last token, which must be computed again.
  Sequence b(2, Iota(3 * kBlock, 0), 4);
  EXPECT_EQ(bm.Allocate(&b, kNoLimit, 0), 2 * kBlock);
  // A caller limit below one block shares nothing.
  Sequence c(3, a.token_ids, 4);
  EXPECT_EQ(bm.Allocate(&c, kBlock - 1, 0), 0);
  Sequence d(4, a.token_ids, 4);
  EXPECT_EQ(bm.Allocate(&d, 2 * kBlock + 1, 0), 2 * kBlock);
}

TEST(BlockManagerTest, SameTokensUnderAnotherParentDoNotMatch) {
  BlockManager bm(32, kBlock, true);
  const std::vector<int32_t> x = Iota(kBlock, 0), y = Iota(kBlock, 100), z = Iota(kBlock, 200);
  Sequence a(1, Concat(Concat(x, z), {1}), 4);
  AllocateAndCompute(bm, &a);
  Sequence b(2, Concat(Concat(y, z), {1}), 4);  // block z again, after a different block
  EXPECT_EQ(AllocateAndCompute(bm, &b), 0);
  EXPECT_NE(b.block_table[1], a.block_table[1]);
  EXPECT_NE(HashBlockTokens(HashBlockTokens(kRootBlockHash, x), z),
            HashBlockTokens(HashBlockTokens(kRootBlockHash, y), z));
  // Nor does a block match at another position of the same chain.
  Sequence c(3, Concat(z, {1}), 4);
  EXPECT_EQ(AllocateAndCompute(bm, &c), 0);
}

TEST(BlockManagerTest, HashIsDeterministicAndOrderSensitive) {
  const std::vector<int32_t> t = {1, 2, 3, 4};
  // A fixed value: the hash must not depend on the process (cached blocks could be persisted).
  EXPECT_EQ(HashBlockTokens(kRootBlockHash, t), 0xec5f4244f449608eULL);
  EXPECT_NE(HashBlockTokens(kRootBlockHash, std::vector<int32_t>{2, 1, 3, 4}),
            HashBlockTokens(kRootBlockHash, t));
  EXPECT_NE(HashBlockTokens(kRootBlockHash + 1, t), HashBlockTokens(kRootBlockHash, t));
}

TEST(BlockManagerTest, FreedCachedBlocksAreEvictedLeastRecentlyFreedFirst) {
  BlockManager bm(6, kBlock, true);
  Sequence a(1, Concat(Iota(2 * kBlock, 0), {9}), 4);  // blocks a0 a1 + partial
  Sequence b(2, Concat(Iota(2 * kBlock, 100), {9}), 4);
  AllocateAndCompute(bm, &a);
  AllocateAndCompute(bm, &b);
  const std::vector<int32_t> a_blocks = a.block_table, b_blocks = b.block_table;
  bm.Free(&a);  // a1 then a0 become evictable, its partial block free
  bm.Free(&b);
  EXPECT_EQ(bm.usage().evictable, 4);
  EXPECT_EQ(bm.usage().free, 2);
  EXPECT_EQ(bm.num_free_blocks(), 6);
  // 4 blocks: the 2 empty ones, then a's tail block, then a's first block.
  Sequence c(3, Iota(4 * kBlock, 1000), 4);
  ASSERT_EQ(bm.Allocate(&c, kNoLimit, 0), 0);
  EXPECT_EQ(c.block_table[2], a_blocks[1]);
  EXPECT_EQ(c.block_table[3], a_blocks[0]);
  EXPECT_FALSE(bm.is_cached(a_blocks[0]));
  EXPECT_TRUE(bm.is_cached(b_blocks[0]) && bm.is_cached(b_blocks[1]));
  // a's prefix is gone, b's is still served (and revived blocks are not counted as free).
  Sequence a2(4, a.token_ids, 4);
  EXPECT_FALSE(bm.Allocate(&a2, kNoLimit, 0).has_value());
  Sequence b2(5, Iota(2 * kBlock, 100), 4);  // 2 blocks, both cached; last token recomputed
  EXPECT_EQ(bm.Allocate(&b2, kNoLimit, 0), kBlock);
  EXPECT_EQ(b2.block_table[0], b_blocks[0]);
  EXPECT_EQ(b2.block_table[1], b_blocks[1]);  // an evictable block taken as a fresh one
  EXPECT_FALSE(bm.is_cached(b_blocks[1]));
}

TEST(BlockManagerTest, DuplicateContentStaysPrivate) {
  BlockManager bm(16, kBlock, true);
  Sequence a(1, Iota(2 * kBlock + 1, 0), 4), b(2, Iota(2 * kBlock + 1, 0), 4);
  ASSERT_EQ(bm.Allocate(&a, kNoLimit, 0), 0);
  ASSERT_EQ(bm.Allocate(&b, kNoLimit, 0), 0);  // admitted before a computed anything
  a.num_computed_tokens = b.num_computed_tokens = 2 * kBlock;
  bm.CacheComputedBlocks(&a);
  bm.CacheComputedBlocks(&b);
  EXPECT_TRUE(bm.is_cached(a.block_table[0]));
  EXPECT_FALSE(bm.is_cached(b.block_table[0]));
  bm.Free(&b);
  EXPECT_EQ(bm.usage().evictable, 0);
  Sequence c(3, a.token_ids, 4);
  EXPECT_EQ(bm.Allocate(&c, kNoLimit, 0), 2 * kBlock);
  EXPECT_EQ(c.block_table[0], a.block_table[0]);
}

// Random admissions, decode growth, prefill progress and frees over a small pool with a small
// vocabulary (so prefixes repeat). After every operation: free + used + evictable == N, every
// block's ref count equals the number of tables holding it, a block in two tables is cached,
// and each cached block's tokens are the tokens of every sequence using it at that position.
TEST(BlockManagerTest, RandomizedInvariants) {
  for (const bool caching : {true, false}) {
    for (uint32_t seed = 0; seed < 20; ++seed) {
      constexpr int32_t kBlocks = 24;
      BlockManager bm(kBlocks, kBlock, caching);
      std::mt19937 rng(seed);
      std::map<uint64_t, std::unique_ptr<Sequence>> live;
      uint64_t next_id = 0;
      auto rand = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
      const std::vector<int32_t> stem = Iota(3 * kBlock, 0);
      for (int op = 0; op < 400; ++op) {
        const int kind = live.empty() ? 0 : rand(0, 3);
        if (kind == 0) {  // admit; prompts often start with a shared stem
          std::vector<int32_t> prompt(stem.begin(), stem.begin() + rand(0, 3) * kBlock);
          for (int n = rand(1, 10); n > 0; --n) prompt.push_back(rand(0, 2));
          auto seq = std::make_unique<Sequence>(next_id++, prompt, 8);
          const int32_t limit = rand(0, 1) ? kNoLimit : rand(0, prompt.size());
          const int32_t free_before = bm.num_free_blocks();
          if (const auto cached = bm.Allocate(seq.get(), limit, rand(0, 2))) {
            EXPECT_EQ(*cached % kBlock, 0);
            EXPECT_LE(*cached, std::min<int32_t>(limit, seq->num_tokens() - 1));
            seq->num_computed_tokens = *cached;
            live.emplace(seq->id, std::move(seq));
          } else {
            EXPECT_TRUE(seq->block_table.empty());
            EXPECT_EQ(bm.num_free_blocks(), free_before);
          }
        } else {
          auto it = std::next(live.begin(), rand(0, live.size() - 1));
          Sequence* seq = it->second.get();
          if (kind == 1) {  // compute some tokens, then maybe append a decode token
            seq->num_computed_tokens =
                std::min(seq->num_tokens(), seq->num_computed_tokens + rand(1, 2 * kBlock));
            bm.CacheComputedBlocks(seq);
            if (seq->num_computed_tokens == seq->num_tokens()) {
              seq->token_ids.push_back(rand(0, 2));
              if (!bm.AppendSlot(seq)) seq->token_ids.pop_back();
            }
          } else {  // finish or abort (same bookkeeping)
            bm.Free(seq);
            EXPECT_TRUE(seq->block_table.empty());
            live.erase(it);
          }
        }
        // Invariants.
        const BlockUsage u = bm.usage();
        ASSERT_EQ(u.free + u.used + u.evictable, kBlocks);
        ASSERT_EQ(bm.num_free_blocks(), u.free + u.evictable);
        std::vector<int32_t> holders(kBlocks, 0);
        std::map<int32_t, std::pair<const Sequence*, int32_t>> first_user;
        for (const auto& [id, seq] : live) {
          ASSERT_EQ(static_cast<int32_t>(seq->block_table.size()), bm.BlocksFor(seq->num_tokens()));
          for (size_t i = 0; i < seq->block_table.size(); ++i) {
            const int32_t b = seq->block_table[i];
            ++holders[b];
            auto [pos, fresh] = first_user.try_emplace(b, seq.get(), static_cast<int32_t>(i));
            if (fresh) continue;
            // Shared: only a cached, fully computed block at the same index with equal tokens.
            ASSERT_TRUE(caching);
            ASSERT_TRUE(bm.is_cached(b));
            ASSERT_EQ(pos->second.second, static_cast<int32_t>(i));
            const auto tokens = [&](const Sequence* s) {
              return std::vector<int32_t>(s->token_ids.begin() + i * kBlock,
                                          s->token_ids.begin() + (i + 1) * kBlock);
            };
            ASSERT_EQ(tokens(pos->second.first), tokens(seq.get()));
          }
        }
        int32_t used = 0;
        for (int32_t b = 0; b < kBlocks; ++b) {
          ASSERT_EQ(bm.ref_count(b), holders[b]) << "block " << b;
          used += holders[b] > 0;
          if (!caching) {
            ASSERT_FALSE(bm.is_cached(b));
          }
        }
        ASSERT_EQ(used, u.used);
      }
      for (auto& [id, seq] : live) bm.Free(seq.get());
      EXPECT_EQ(bm.num_free_blocks(), kBlocks);
      EXPECT_EQ(bm.usage().used, 0);
      if (caching) {
        EXPECT_GT(bm.usage().hit_tokens, 0) << "seed " << seed;
      }
    }
  }
}

}  // namespace
}  // namespace sals
