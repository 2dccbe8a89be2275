// Backend::ForwardSample's host half, shared by the backends: argument checks, and sampling a
// ForwardOutput's logits with the engine's reference sampler.
#pragma once

#include <span>
#include <vector>

#include "absl/status/status.h"
#include "engine/backend/backend.h"
#include "engine/sampling/sampler.h"

namespace sals {

// rows.size() must equal batch.seqs.size().
absl::Status ValidateSampleRows(const ForwardBatch& batch,
                                std::span<const RowSampling* const> rows);

// SampleRow over each sampled sequence's last logits row of `out` (a Forward result of `batch`;
// its rows are modified in place).
void SampleOnHost(const ForwardBatch& batch, std::span<const RowSampling* const> rows,
                  int vocab_size, ForwardOutput* out, std::vector<SampleResult>* results);

}  // namespace sals
