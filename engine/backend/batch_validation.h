// Checks a ForwardBatch against the model and pool before any backend touches the cache.
#pragma once

#include "absl/status/status.h"
#include "engine/backend/backend.h"

namespace sals {

// OK when token ids are in the vocabulary, per-sequence token counts add up to tokens.size(),
// every block table covers context_len + num_tokens and names blocks inside the pool.
absl::Status ValidateForwardBatch(const ForwardBatch& batch, const ModelConfig& config,
                                  const KvPoolConfig& pool);

// Logit rows the batch asks for, and each sequence's first row (ForwardOutput::row_begin).
int32_t AssignLogitRows(const ForwardBatch& batch, std::vector<int32_t>* row_begin);

}  // namespace sals
