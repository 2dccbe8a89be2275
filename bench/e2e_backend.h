// The CUDA backend as the end-to-end benchmarks load it: synthetic weights, a pool of one KV
// format, and for SALS formats a random basis (no calibration fits random weights).
#pragma once

#include <cmath>
#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/backend/cuda_loader.h"
#include "engine/kv/kv_format.h"
#include "engine/model/config.h"
#include "engine/model/weight_source.h"
#include "engine/sals/basis.h"

namespace sals::bench {

// One D x rank basis with orthonormal columns (Gram-Schmidt in double on a seeded Gaussian
// matrix), the same for every layer.
inline SalsBasis RandomBasis(const ModelConfig& c, int rank, uint64_t seed) {
  const int d = c.kv_width();
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal;
  std::vector<double> u(static_cast<size_t>(d) * rank);
  for (int j = 0; j < rank; ++j) {
    for (int i = 0; i < d; ++i) u[static_cast<size_t>(i) * rank + j] = normal(rng);
    for (int k = 0; k < j; ++k) {
      double dot = 0.0;
      for (int i = 0; i < d; ++i) {
        dot += u[static_cast<size_t>(i) * rank + j] * u[static_cast<size_t>(i) * rank + k];
      }
      for (int i = 0; i < d; ++i) {
        u[static_cast<size_t>(i) * rank + j] -= dot * u[static_cast<size_t>(i) * rank + k];
      }
    }
    double norm = 0.0;
    for (int i = 0; i < d; ++i) {
      norm += u[static_cast<size_t>(i) * rank + j] * u[static_cast<size_t>(i) * rank + j];
    }
    for (int i = 0; i < d; ++i) u[static_cast<size_t>(i) * rank + j] /= std::sqrt(norm);
  }
  SalsBasis basis;
  basis.width = d;
  basis.rank = rank;
  basis.layers.assign(c.num_layers, std::vector<float>(u.begin(), u.end()));
  return basis;
}

// The backend over a pool of `num_blocks` blocks of `block_size` tokens in format `kv` ("dense",
// "sals-25", "sals-12.5"); SALS formats get `max_sequences` exact slots and a random basis.
inline absl::StatusOr<std::unique_ptr<CudaBackend>> LoadE2eBackend(
    const ModelConfig& config, const WeightSource& weights, const std::string& kv, int block_size,
    int num_blocks, int max_sequences, CudaBackendOptions options) {
  KvPoolConfig pool;
  pool.block_size = block_size;
  pool.num_blocks = num_blocks;
  auto format = MakeKvCacheFormat(config, kv);
  if (!format.ok()) return format.status();
  pool.format = *std::move(format);
  if (pool.format.sals) {
    pool.max_sequences = max_sequences;
    options.sals_basis = RandomBasis(config, pool.format.sals->rank, 5);
  }
  return LoadCudaBackend(config, weights, pool, options);
}

}  // namespace sals::bench
