// sals-calibrate's checkpoint: the key covariance sums accumulated so far and how many sequences
// they cover, written next to the output every so often, so that an interrupted run resumes
// (--resume) instead of starting over.
//
// File (safetensors, "<output>.checkpoint"):
//   layers.{l}.sums  F64 [D, D]   sum of k k^T over the keys seen (column-major, lower triangle)
// metadata: "model" (config architecture), "kv_width", "num_layers", "vocab_size", "data"
// (SequencesFingerprint of the run's sequences), "sequences_done", "tokens".
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/model/config.h"
#include "engine/sals/calibration.h"

namespace sals {

// "<output>.checkpoint".
std::filesystem::path CheckpointPath(const std::filesystem::path& output);

// Writes the sums of `covariance` (every layer must have seen the same tokens), with the
// fingerprint of the run's data and the number of leading sequences they cover. Atomic: a reader
// sees the previous checkpoint or this one.
absl::Status WriteCheckpoint(const std::filesystem::path& path, const ModelConfig& config,
                             const KeyCovariance& covariance, const std::string& data_fingerprint,
                             int64_t sequences_done);

// Adds a checkpoint's sums into `covariance` (fresh, for `config`) and returns the number of
// sequences they cover. Errors name the file and what differs: another model's shape, other
// data or another cut of it (the fingerprint), a missing or malformed tensor.
absl::StatusOr<int64_t> ReadCheckpoint(const std::filesystem::path& path, const ModelConfig& config,
                                       const std::string& data_fingerprint,
                                       KeyCovariance* covariance);

}  // namespace sals
