// Offline SALS calibration: the pre-RoPE key covariance of every layer (all KV heads joined,
// width D = kv_width), its eigen-decomposition, and the calibration file basis.h specifies.
#pragma once

#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/model/config.h"

namespace sals {

// One layer's spectrum: eigenvalues descending (clamped at 0: C is positive semi-definite, tiny
// negative values are rounding), eigenvectors as the columns of a D x D row-major matrix, each
// with its largest-magnitude component positive (the first such on ties) so that files are
// reproducible.
struct LayerSpectrum {
  std::vector<double> eigenvalues;
  std::vector<double> eigenvectors;

  // sum(top `rank` eigenvalues) / sum(all).
  double Energy(int rank) const;
};

struct KeySpectra {
  std::string model;  // config architecture
  int width = 0;      // D
  int64_t tokens = 0;
  std::vector<LayerSpectrum> layers;
};

// Accumulates C = sum k k^T in fp64 per layer. Feed it from CpuBackendOptions::projection_observer
// (AddProjections) or with bare keys (AddKeys).
class KeyCovariance {
 public:
  explicit KeyCovariance(const ModelConfig& config);

  // Rows of q | k | v as the projection observer hands them; the k columns are used.
  void AddProjections(int layer, std::span<const float> qkv_pre_rope, int64_t tokens);
  // Rows of D key values.
  void AddKeys(int layer, std::span<const float> keys, int64_t tokens);

  // Sums of k k^T already accumulated elsewhere (another device, an earlier run): a D x D matrix
  // (column-major; only its lower triangle is read) over `tokens` keys, added to the layer's.
  // Errors name the layer and the expected size.
  absl::Status AddSums(int layer, std::span<const double> sums, int64_t tokens);

  int width() const { return width_; }
  int num_layers() const { return static_cast<int>(tokens_.size()); }
  int64_t tokens(int layer) const { return tokens_[layer]; }
  // The layer's running sum, D x D column-major with the lower triangle filled (the rest is 0).
  std::span<const double> sums(int layer) const { return covariance_[layer]; }

  // Eigen-decomposes every layer. Errors when a layer saw no tokens, layers saw different token
  // counts, or a layer's keys carry no energy (all zero or not finite).
  absl::StatusOr<KeySpectra> Decompose() const;

 private:
  void AddRows(int layer, const float* rows, int64_t stride, int64_t tokens);

  ModelConfig config_;
  int width_;
  std::vector<std::vector<double>> covariance_;  // per layer, D x D (lower triangle filled)
  std::vector<int64_t> tokens_;
};

// Ranks for fractions of the width: round(width * f), at least 1; sorted, duplicates removed.
// Every fraction must lie in (0, 1].
absl::StatusOr<std::vector<int>> RanksFromFractions(int width, std::span<const double> fractions);

// Writes the calibration file (format in basis.h) with a basis and an energy per rank, and
// `layer_ranks` (one per layer, rank_allocation.h) as the "layer_ranks" metadata when given: each
// must be 0 or at most the largest of `ranks`. The bytes depend only on the arguments.
absl::Status WriteCalibration(const std::filesystem::path& path, const KeySpectra& spectra,
                              std::span<const int> ranks, std::span<const int> layer_ranks = {});

}  // namespace sals
