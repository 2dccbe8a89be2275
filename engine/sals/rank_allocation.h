// Layer-adaptive latent rank (the SALS paper's future work): how much key energy each layer's
// basis captures at each rank, and ranks per layer chosen at a total budget by captured energy.
#pragma once

#include <span>
#include <vector>

#include "absl/status/statusor.h"

namespace sals {

// Latent ranks are allocated in multiples of this: the CUDA backend stores a rank rounded up to a
// multiple of 8 and its fast decode path needs one (cuda_kv_arena.h, cuda_step_kernels.cc).
inline constexpr int kRankStep = 8;

// sum(top `rank` eigenvalues) / sum(all) of one layer's descending spectrum; 0 when it is empty
// or carries no energy.
double CapturedEnergy(std::span<const double> eigenvalues, int rank);

// Per layer (eigenvalues[l], descending, all of the same width D), a rank: 0 for layers not in
// `layers` (kept dense), else a multiple of kRankStep in [kRankStep, D], with the ranks of
// `layers` summing to `total_rank`. Greedy on marginal energy: every layer starts at kRankStep,
// then kRankStep more goes to the layer whose next kRankStep dims capture the most of its own
// energy (ties to the lower layer), until the total is spent; with descending spectra the gains
// shrink, so this maximizes the summed captured fraction. Errors when total_rank is not a
// multiple of kRankStep, lies outside [kRankStep, D] per layer, or a layer is out of range.
absl::StatusOr<std::vector<int>> AllocateLayerRanks(
    std::span<const std::vector<double>> eigenvalues, std::span<const int> layers, int total_rank);

}  // namespace sals
