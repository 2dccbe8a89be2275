// Where sals-calibrate's keys come from: the dense CPU reference (fp32, DenseCapture's projection
// observer adds each chunk's keys to the covariance as it goes) or the CUDA backend (f16/bf16;
// the backend sums k k^T on the device and the sums join the covariance at each Flush).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/common/dtype.h"
#include "engine/model/config.h"
#include "engine/model/weight_source.h"
#include "engine/sals/calibration.h"

namespace sals {

// Called with the number of tokens whose keys were just taken.
using TokensDone = std::function<void(int64_t tokens)>;

class KeyRunner {
 public:
  virtual ~KeyRunner() = default;
  // Runs sequences from `next` on, up to a point where every sequence begun is complete, and
  // returns the first sequence not run (one sequence on the CPU; one or more steps on the GPU).
  virtual absl::StatusOr<int64_t> RunUnit(int64_t next) = 0;
  // Everything run so far is in `covariance` afterwards.
  virtual absl::Status Flush(KeyCovariance* covariance) = 0;
};

// Sequences of up to `seq_len` tokens, prefilled `chunk` tokens per step; keys go straight into
// `covariance` (which must outlive the runner).
absl::StatusOr<std::unique_ptr<KeyRunner>> CreateCpuKeyRunner(
    const ModelConfig& config, const WeightSource& weights,
    const std::vector<std::vector<int32_t>>* seqs, int seq_len, int chunk,
    KeyCovariance* covariance, TokensDone tokens_done);

// The CUDA backend (libsals_backend_cuda.so through the loader) in `dtype` with a dense pool sized
// for sequences [first, end) packed into steps of up to `step_tokens` tokens.
absl::StatusOr<std::unique_ptr<KeyRunner>> CreateCudaKeyRunner(
    const ModelConfig& config, const WeightSource& weights,
    const std::vector<std::vector<int32_t>>* seqs, int64_t first, int step_tokens, DType dtype,
    TokensDone tokens_done);

}  // namespace sals
