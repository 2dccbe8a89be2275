#include "engine/sched/block_manager.h"

#include <algorithm>

namespace sals {
namespace {

// splitmix64's finalizer: a bijective mix with full avalanche.
uint64_t Mix64(uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebULL;
  x ^= x >> 31;
  return x;
}

}  // namespace

uint64_t HashBlockTokens(uint64_t parent_hash, std::span<const int32_t> tokens) {
  uint64_t h = Mix64(parent_hash);
  for (const int32_t t : tokens) h = Mix64(h + 0x9e3779b97f4a7c15ULL + static_cast<uint32_t>(t));
  return h;
}

BlockManager::BlockManager(int32_t num_blocks, int32_t block_size, bool enable_prefix_caching)
    : num_blocks_(num_blocks),
      block_size_(block_size),
      enable_prefix_caching_(enable_prefix_caching),
      blocks_(num_blocks) {
  free_.reserve(num_blocks);
  for (int32_t b = num_blocks - 1; b >= 0; --b) free_.push_back(b);
  if (enable_prefix_caching) {
    cached_tokens_.resize(static_cast<size_t>(num_blocks) * block_size);
  }
}

BlockUsage BlockManager::usage() const {
  BlockUsage u;
  u.num_blocks = num_blocks_;
  u.free = static_cast<int32_t>(free_.size());
  u.evictable = num_evictable_;
  u.used = num_blocks_ - u.free - u.evictable;
  u.queried_tokens = queried_tokens_;
  u.hit_tokens = hit_tokens_;
  return u;
}

void BlockManager::HashBlocks(Sequence* seq, int32_t count) const {
  std::vector<uint64_t>& hashes = seq->block_hashes;
  for (int32_t i = static_cast<int32_t>(hashes.size()); i < count; ++i) {
    const uint64_t parent = i == 0 ? kRootBlockHash : hashes[i - 1];
    hashes.push_back(
        HashBlockTokens(parent, std::span<const int32_t>(seq->token_ids)
                                    .subspan(static_cast<size_t>(i) * block_size_, block_size_)));
  }
}

int32_t BlockManager::Lookup(const Sequence& seq, int32_t index) const {
  const auto it = cache_.find(seq.block_hashes[index]);
  if (it == cache_.end()) return -1;
  const int32_t block = it->second;
  // A 64-bit collision must not alias content: the parent hash and the tokens must match too.
  const uint64_t parent = index == 0 ? kRootBlockHash : seq.block_hashes[index - 1];
  if (blocks_[block].parent_hash != parent) return -1;
  const auto tokens = seq.token_ids.begin() + static_cast<int64_t>(index) * block_size_;
  const auto cached = cached_tokens_.begin() + static_cast<int64_t>(block) * block_size_;
  return std::equal(tokens, tokens + block_size_, cached) ? block : -1;
}

std::optional<int32_t> BlockManager::Allocate(Sequence* seq, int32_t max_cached_tokens,
                                              int32_t reserve_blocks) {
  const int32_t cacheable = std::min(max_cached_tokens, seq->num_tokens() - 1);
  const int32_t max_hits = enable_prefix_caching_ ? std::max(0, cacheable) / block_size_ : 0;
  HashBlocks(seq, max_hits);
  // Probe into the block table; it is emptied again when the pool is short.
  int32_t revived = 0;  // hits on evictable blocks: they stop being allocatable
  for (int32_t i = 0; i < max_hits; ++i) {
    const int32_t block = Lookup(*seq, i);
    if (block < 0) break;
    if (blocks_[block].ref_count == 0) ++revived;
    seq->block_table.push_back(block);
  }
  const int32_t hits = static_cast<int32_t>(seq->block_table.size());
  const int32_t fresh = BlocksFor(seq->num_tokens()) - hits;
  if (fresh + reserve_blocks > num_free_blocks() - revived) {
    seq->block_table.clear();
    return std::nullopt;
  }
  for (const int32_t block : seq->block_table) {
    if (blocks_[block].ref_count++ == 0) LruRemove(block);
  }
  for (int32_t i = 0; i < fresh; ++i) seq->block_table.push_back(TakeBlock());
  seq->num_cached_blocks = hits;
  if (enable_prefix_caching_) {
    queried_tokens_ += seq->num_tokens();
    hit_tokens_ += static_cast<int64_t>(hits) * block_size_;
  }
  return hits * block_size_;
}

bool BlockManager::AppendSlot(Sequence* seq) {
  const int32_t missing =
      BlocksFor(seq->num_tokens()) - static_cast<int32_t>(seq->block_table.size());
  if (missing <= 0) return true;
  if (missing > num_free_blocks()) return false;
  for (int32_t i = 0; i < missing; ++i) seq->block_table.push_back(TakeBlock());
  return true;
}

void BlockManager::CacheComputedBlocks(Sequence* seq) {
  if (!enable_prefix_caching_) return;
  const int32_t full = seq->num_computed_tokens / block_size_;
  if (full <= seq->num_cached_blocks) return;
  HashBlocks(seq, full);
  for (int32_t i = seq->num_cached_blocks; i < full; ++i) {
    const int32_t block = seq->block_table[i];
    const uint64_t hash = seq->block_hashes[i];
    if (!cache_.try_emplace(hash, block).second) continue;
    Block& b = blocks_[block];
    b.cached = true;
    b.hash = hash;
    b.parent_hash = i == 0 ? kRootBlockHash : seq->block_hashes[i - 1];
    std::copy_n(seq->token_ids.begin() + static_cast<int64_t>(i) * block_size_, block_size_,
                cached_tokens_.begin() + static_cast<int64_t>(block) * block_size_);
  }
  seq->num_cached_blocks = full;
}

void BlockManager::Free(Sequence* seq) {
  // Last block first: within one sequence the tail is evicted before the prefix it extends,
  // which is the part other requests are likelier to share.
  for (auto it = seq->block_table.rbegin(); it != seq->block_table.rend(); ++it) {
    Block& b = blocks_[*it];
    if (--b.ref_count > 0) continue;
    if (b.cached) {
      LruPushBack(*it);
    } else {
      free_.push_back(*it);
    }
  }
  seq->block_table.clear();
  seq->num_cached_blocks = 0;
}

int32_t BlockManager::TakeBlock() {
  int32_t block;
  if (!free_.empty()) {
    block = free_.back();
    free_.pop_back();
  } else {
    block = lru_head_;
    LruRemove(block);
    Block& b = blocks_[block];
    cache_.erase(b.hash);
    b.cached = false;
  }
  blocks_[block].ref_count = 1;
  return block;
}

void BlockManager::LruPushBack(int32_t block) {
  Block& b = blocks_[block];
  b.lru_prev = lru_tail_;
  b.lru_next = -1;
  if (lru_tail_ >= 0) {
    blocks_[lru_tail_].lru_next = block;
  } else {
    lru_head_ = block;
  }
  lru_tail_ = block;
  ++num_evictable_;
}

void BlockManager::LruRemove(int32_t block) {
  Block& b = blocks_[block];
  if (b.lru_prev >= 0) {
    blocks_[b.lru_prev].lru_next = b.lru_next;
  } else {
    lru_head_ = b.lru_next;
  }
  if (b.lru_next >= 0) {
    blocks_[b.lru_next].lru_prev = b.lru_prev;
  } else {
    lru_tail_ = b.lru_prev;
  }
  b.lru_prev = b.lru_next = -1;
  --num_evictable_;
}

}  // namespace sals
