#include "engine/sals/rank_allocation.h"

#include <algorithm>
#include <numeric>

#include "absl/strings/str_cat.h"

namespace sals {

double CapturedEnergy(std::span<const double> eigenvalues, int rank) {
  const double total = std::accumulate(eigenvalues.begin(), eigenvalues.end(), 0.0);
  if (!(total > 0.0)) return 0.0;
  rank = std::clamp<int>(rank, 0, static_cast<int>(eigenvalues.size()));
  return std::accumulate(eigenvalues.begin(), eigenvalues.begin() + rank, 0.0) / total;
}

absl::StatusOr<std::vector<int>> AllocateLayerRanks(
    std::span<const std::vector<double>> eigenvalues, std::span<const int> layers, int total_rank) {
  const int num_layers = static_cast<int>(eigenvalues.size());
  if (layers.empty()) return absl::InvalidArgumentError("no layers to allocate ranks to");
  const int width = static_cast<int>(eigenvalues[0].size());
  for (int l : layers) {
    if (l < 0 || l >= num_layers) {
      return absl::InvalidArgumentError(
          absl::StrCat("layer ", l, " outside [0, ", num_layers, ")"));
    }
    if (static_cast<int>(eigenvalues[l].size()) != width) {
      return absl::InvalidArgumentError(absl::StrCat("layer ", l, " has ", eigenvalues[l].size(),
                                                     " eigenvalues, layer 0 ", width));
    }
  }
  const int n = static_cast<int>(layers.size());
  const int max_rank = width / kRankStep * kRankStep;
  if (total_rank % kRankStep != 0 || total_rank < n * kRankStep || total_rank > n * max_rank) {
    return absl::InvalidArgumentError(
        absl::StrCat("total rank must be a multiple of ", kRankStep, " in [", n * kRankStep, ", ",
                     n * max_rank, "] for ", n, " layers of width ", width, ", got ", total_rank));
  }
  std::vector<int> ranks(num_layers, 0);
  for (int l : layers) ranks[l] = kRankStep;
  for (int spent = n * kRankStep; spent < total_rank; spent += kRankStep) {
    int best = -1;
    double best_gain = -1.0;
    for (int l : layers) {
      if (ranks[l] + kRankStep > max_rank) continue;
      const double gain = CapturedEnergy(eigenvalues[l], ranks[l] + kRankStep) -
                          CapturedEnergy(eigenvalues[l], ranks[l]);
      if (gain > best_gain || (gain == best_gain && l < best)) {
        best = l;
        best_gain = gain;
      }
    }
    ranks[best] += kRankStep;
  }
  return ranks;
}

}  // namespace sals
