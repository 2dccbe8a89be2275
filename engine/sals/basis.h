// The latent bases SALS projects keys into: per layer, the top eigenvectors of the pre-RoPE key
// covariance (all KV heads joined, width D = num_kv_heads * head_dim), written by sals-calibrate.
//
// Calibration file (safetensors, default name kCalibrationFileName in the model directory):
//   layers.{l}.eigenvalues   F64 [D]      descending
//   layers.{l}.rank{r}.basis F32 [D, r]   columns = eigenvectors, descending eigenvalue
//   layers.{l}.rank{r}.energy F64 [1]     captured fraction sum(top r) / sum(all)
// metadata: "model" (config architecture), "kv_width", "num_layers", "ranks", "tokens"; optional
// "layer_ranks" (one rank per layer, 0 = none: sals-calibrate --layer-rank-budget's allocation,
// engine/sals/rank_allocation.h), absent in files written before it and without the option.
#pragma once

#include <filesystem>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/model/config.h"

namespace sals {

inline constexpr char kCalibrationFileName[] = "sals_calibration.safetensors";

struct SalsBasis {
  int width = 0;  // D
  int rank = 0;   // columns kept per layer
  // Per layer, row-major [width x rank]: element (i, j) at i * rank + j.
  std::vector<std::vector<float>> layers;
};

// Loads rank `rank` bases for every layer from a calibration file: the smallest stored rank >=
// `rank` is read and its leading `rank` columns kept (eigenvectors are sorted, so a prefix of a
// larger basis is the smaller one). Errors name the file and the tensor.
absl::StatusOr<SalsBasis> LoadSalsBasis(const std::filesystem::path& file,
                                        const ModelConfig& config, int rank);

// The file's "layer_ranks" metadata: empty when it has none (older files, uniform rank); errors
// when it is malformed or not one rank in [0, kv_width] per layer of `config`.
absl::StatusOr<std::vector<int>> LoadLayerRanks(const std::filesystem::path& file,
                                                const ModelConfig& config);

// Identity basis of full rank (D columns): SALS with it reconstructs keys exactly. For tests.
SalsBasis IdentityBasis(const ModelConfig& config);

}  // namespace sals
