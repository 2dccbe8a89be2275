// Runs the dense CPU reference over token sequences (chunked prefill through a paged KV pool) and
// hands every layer's pre-RoPE q | k | v rows to an observer: what calibration and recall
// measurement feed on.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/backend/backend.h"
#include "engine/model/config.h"
#include "engine/model/weight_source.h"

namespace sals {

// As CpuBackendOptions::projection_observer: [tokens x (q_width + 2 * kv_width)] row-major.
using ProjectionObserver =
    std::function<void(int layer, std::span<const float> qkv_pre_rope, int64_t tokens)>;

class DenseCapture {
 public:
  // Sequences of up to `max_len` tokens (within max_position_embeddings), prefilled `chunk`
  // tokens per forward step.
  static absl::StatusOr<std::unique_ptr<DenseCapture>> Create(const ModelConfig& config,
                                                              const WeightSource& weights,
                                                              int max_len, int chunk,
                                                              ProjectionObserver observer);

  // Runs one sequence from position 0; the observer sees its tokens in order. The pool is reused,
  // so sequences are independent of each other.
  absl::Status Run(std::span<const int32_t> tokens);

 private:
  DenseCapture(std::unique_ptr<Backend> backend, int max_len, int chunk, int num_blocks);

  std::unique_ptr<Backend> backend_;
  int max_len_;
  int chunk_;
  std::vector<int32_t> block_table_;
};

}  // namespace sals
