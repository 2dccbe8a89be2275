// Integer bookkeeping for the paged KV pool: a fixed pool of blocks of block_size tokens, a free
// list, reference counts and a prefix cache. The device memory behind the block ids lives in the
// backend; nothing here touches it.
//
// Prefix cache: a full block whose KV has been computed is registered under the chained hash
// hash(parent block's hash, its block_size token ids). Admission looks a sequence's leading full
// blocks up in order and shares the hits (ref count + 1) instead of recomputing them. A block
// whose ref count drops to zero keeps its registration ("evictable") until the free list runs dry;
// then the least recently freed one is reused. Blocks are shared only when complete and
// computed, so a block being written is never shared.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "engine/sched/sequence.h"

namespace sals {

// The parent hash of a sequence's first block.
inline constexpr uint64_t kRootBlockHash = 0x5a15'5e4e'b10c'0000ULL;

// Deterministic across runs and platforms (not absl::Hash, which is seeded per process).
uint64_t HashBlockTokens(uint64_t parent_hash, std::span<const int32_t> tokens);

struct BlockUsage {
  int32_t num_blocks = 0;
  int32_t used = 0;       // held by at least one sequence
  int32_t evictable = 0;  // held by none, still registered in the prefix cache
  int32_t free = 0;       // held by none, empty
  // Prefix cache hit rate = hit_tokens / queried_tokens, over admissions.
  int64_t queried_tokens = 0;
  int64_t hit_tokens = 0;
};

class BlockManager {
 public:
  BlockManager(int32_t num_blocks, int32_t block_size, bool enable_prefix_caching);

  int32_t num_blocks() const { return num_blocks_; }
  int32_t block_size() const { return block_size_; }
  // Blocks an allocation can take: free ones plus evictable ones.
  int32_t num_free_blocks() const { return static_cast<int32_t>(free_.size()) + num_evictable_; }
  BlockUsage usage() const;
  int32_t BlocksFor(int64_t tokens) const {
    return static_cast<int32_t>((tokens + block_size_ - 1) / block_size_);
  }

  // Admission of `seq` (empty block table): blocks for all of its tokens, the longest cached
  // prefix of full blocks shared from the prefix cache. At most `max_cached_tokens` tokens (and
  // never the last one, whose logits the step must produce) come from the cache. Succeeds only
  // when `reserve_blocks` blocks stay allocatable afterwards. Returns how many leading tokens the
  // shared blocks already hold (a multiple of block_size), or nullopt with nothing changed.
  std::optional<int32_t> Allocate(Sequence* seq, int32_t max_cached_tokens, int32_t reserve_blocks);

  // Grows the block table of a running `seq` to cover all of its tokens (a decode token that
  // starts a new block). False, with nothing changed, when the pool has too few blocks.
  bool AppendSlot(Sequence* seq);

  // Registers the full blocks among the first seq->num_computed_tokens tokens in the prefix
  // cache (those not offered yet). A block whose content is already cached under another block
  // stays private and returns to the free list when freed.
  void CacheComputedBlocks(Sequence* seq);

  // Releases all of `seq`'s blocks (ref count - 1; at zero, registered blocks become evictable,
  // the others free). The table is emptied; block_hashes are kept.
  void Free(Sequence* seq);

  // For tests and invariant checks.
  int32_t ref_count(int32_t block) const { return blocks_[block].ref_count; }
  bool is_cached(int32_t block) const { return blocks_[block].cached; }

 private:
  struct Block {
    int32_t ref_count = 0;
    bool cached = false;  // registered in cache_ under `hash`
    uint64_t hash = 0;
    uint64_t parent_hash = 0;  // kept with the tokens to tell hash collisions from hits
    int32_t lru_prev = -1, lru_next = -1;
  };

  // Extends seq->block_hashes to its first `count` full blocks.
  void HashBlocks(Sequence* seq, int32_t count) const;
  // The cached block holding block `index` of `seq` (its hash computed), or -1.
  int32_t Lookup(const Sequence& seq, int32_t index) const;
  // A block with ref count 1, from the free list or else by evicting the LRU evictable block.
  int32_t TakeBlock();
  void LruPushBack(int32_t block);
  void LruRemove(int32_t block);

  int32_t num_blocks_;
  int32_t block_size_;
  bool enable_prefix_caching_;
  std::vector<Block> blocks_;
  std::vector<int32_t> free_;              // a stack; block 0 on top initially
  std::vector<int32_t> cached_tokens_;     // [num_blocks x block_size], valid where cached
  int32_t lru_head_ = -1, lru_tail_ = -1;  // evictable blocks, least recently freed first
  int32_t num_evictable_ = 0;
  absl::flat_hash_map<uint64_t, int32_t> cache_;  // hash -> block
  int64_t queried_tokens_ = 0;
  int64_t hit_tokens_ = 0;
};

}  // namespace sals
