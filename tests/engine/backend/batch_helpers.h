// Test helpers for driving a Backend: pools, one-sequence batches, logits rows.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <utility>
#include <vector>

#include "engine/backend/backend.h"

namespace sals::testing {

inline KvPoolConfig Pool(int num_blocks, int block_size) {
  KvPoolConfig pool;
  pool.num_blocks = num_blocks;
  pool.block_size = block_size;
  return pool;
}

// A batch of one slice: `tokens` at positions context_len.., through `table`.
inline ForwardBatch OneSlice(std::vector<int32_t> tokens, int context_len,
                             std::vector<int32_t> table, bool all_logits) {
  ForwardBatch b;
  SequenceSlice s;
  s.num_tokens = static_cast<int32_t>(tokens.size());
  s.context_len = context_len;
  s.block_table = std::move(table);
  s.all_logits = all_logits;
  b.seqs.push_back(std::move(s));
  b.tokens = std::move(tokens);
  return b;
}

inline int Argmax(const float* row, int n) {
  return static_cast<int>(std::max_element(row, row + n) - row);
}

inline double MaxAbs(const float* row, int n) {
  double m = 0.0;
  for (int i = 0; i < n; ++i) m = std::max(m, std::abs(static_cast<double>(row[i])));
  return m;
}

}  // namespace sals::testing
