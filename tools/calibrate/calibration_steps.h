// How sals-calibrate's CUDA path runs its sequences: packed into prefill steps of at most
// `step_tokens` tokens. Whole sequences share a step while they fit; a longer one runs alone, in
// chunks, over as many steps as it needs. Every sequence of a step starts its block table at
// block 0 of a pool of BlocksNeeded blocks (the sequences of a step take consecutive ranges).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace sals {

struct StepSlice {
  int64_t seq = 0;    // index into the sequences
  int32_t begin = 0;  // first token of the slice (tokens before it are cached)
  int32_t len = 0;
};

struct CalibrationStep {
  std::vector<StepSlice> slices;
  // Sequences [0, sequences_done) are complete after this step, none other has started: a
  // checkpoint may be taken here. -1 when a sequence is part way through.
  int64_t sequences_done = -1;
};

// Steps for sequences [first, lengths.size()) in order; step_tokens >= 1.
std::vector<CalibrationStep> PlanCalibrationSteps(std::span<const int64_t> lengths, int64_t first,
                                                  int step_tokens);

// Blocks of `block_size` tokens the steps need at once (the pool size).
int BlocksNeeded(std::span<const CalibrationStep> steps, int block_size);

// The block table of each slice of `step`, in slice order.
std::vector<std::vector<int32_t>> StepBlockTables(const CalibrationStep& step, int block_size);

}  // namespace sals
