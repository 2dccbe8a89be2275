#include "tools/calibrate/calibration_steps.h"

#include <algorithm>
#include <numeric>

namespace sals {
namespace {

int64_t Blocks(int64_t tokens, int block_size) { return (tokens + block_size - 1) / block_size; }

}  // namespace

std::vector<CalibrationStep> PlanCalibrationSteps(std::span<const int64_t> lengths, int64_t first,
                                                  int step_tokens) {
  std::vector<CalibrationStep> steps;
  const int64_t n = static_cast<int64_t>(lengths.size());
  for (int64_t s = first; s < n;) {
    if (lengths[s] > step_tokens) {
      for (int64_t begin = 0; begin < lengths[s]; begin += step_tokens) {
        CalibrationStep& step = steps.emplace_back();
        const int64_t len = std::min<int64_t>(step_tokens, lengths[s] - begin);
        step.slices.push_back({s, static_cast<int32_t>(begin), static_cast<int32_t>(len)});
        if (begin + len == lengths[s]) step.sequences_done = s + 1;
      }
      ++s;
      continue;
    }
    CalibrationStep& step = steps.emplace_back();
    for (int64_t budget = step_tokens; s < n && lengths[s] <= budget; budget -= lengths[s], ++s) {
      step.slices.push_back({s, 0, static_cast<int32_t>(lengths[s])});
    }
    step.sequences_done = s;
  }
  return steps;
}

int BlocksNeeded(std::span<const CalibrationStep> steps, int block_size) {
  int64_t most = 0;
  for (const CalibrationStep& step : steps) {
    int64_t blocks = 0;
    for (const StepSlice& slice : step.slices)
      blocks += Blocks(slice.begin + slice.len, block_size);
    most = std::max(most, blocks);
  }
  return static_cast<int>(most);
}

std::vector<std::vector<int32_t>> StepBlockTables(const CalibrationStep& step, int block_size) {
  std::vector<std::vector<int32_t>> tables;
  int32_t next = 0;
  for (const StepSlice& slice : step.slices) {
    std::vector<int32_t>& table = tables.emplace_back(Blocks(slice.begin + slice.len, block_size));
    std::iota(table.begin(), table.end(), next);
    next += static_cast<int32_t>(table.size());
  }
  return tables;
}

}  // namespace sals
