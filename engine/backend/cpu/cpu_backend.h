// The fp32 CPU reference backend: the ground truth every other backend and kernel is checked
// against. Weights are converted to fp32 at load; the KV pool is fp32 (dense layers) or SALS
// storage (latent keys, quantized values) as the pool's format says.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>

#include "absl/status/statusor.h"
#include "engine/backend/backend.h"
#include "engine/model/config.h"
#include "engine/model/weight_source.h"
#include "engine/sals/basis.h"

namespace sals {

struct CpuBackendOptions {
  // Latent bases; required when the pool's format has SALS layers (rank >= the stored rank).
  SalsBasis basis;
  // Called per layer with the pre-RoPE projections of every new token, [tokens x (q_width +
  // 2 * kv_width)] row-major (q | k | v), in batch token order: calibration collects keys from
  // it, recall measurement queries and keys.
  std::function<void(int layer, std::span<const float> qkv_pre_rope, int64_t tokens)>
      projection_observer;
  // Called for each one-token SALS step with the cached positions it attends to (sorted; the
  // new token itself not included): selection statistics and tests. Once with kv_head -1 when
  // every head attends one list (SalsSelection::kShared), else once per KV head with its list.
  std::function<void(int layer, int seq, int kv_head, std::span<const int64_t> positions)>
      selection_observer;
  // OpenMP threads of each Forward (set on the calling thread); 0 = OpenMP's default.
  int num_threads = 0;
};

absl::StatusOr<std::unique_ptr<Backend>> CreateCpuBackend(const ModelConfig& config,
                                                          const WeightSource& weights,
                                                          const KvPoolConfig& pool,
                                                          CpuBackendOptions options = {});

}  // namespace sals
