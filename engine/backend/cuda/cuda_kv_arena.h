// The KV pool's device memory: one arena with every layer's storage (a dense layer's fp16 K and V
// pools; a SALS layer's latent keys, value codes, scales and zeros, and exact sink/recent rows),
// and the SALS bases apart. Which blocks a sequence uses is decided outside (block tables).
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/backend/backend.h"
#include "engine/model/config.h"
#include "engine/sals/basis.h"
#include "sals/kernels/cuda_utils.h"
#include "sals/kernels/sals_kv.h"

namespace sals::cuda {

// Where a layer's KV storage lives in the arena.
struct LayerKv {
  bool dense = true;
  __half* k = nullptr;  // dense: [slots x D]
  __half* v = nullptr;
  kernels::SalsKvCache sals;  // SALS: storage pointers and shapes; per-step fields filled per view
};

class KvArena {
 public:
  // Per layer either dense K and V pools or the SALS storage, each region 256-byte aligned;
  // ComputeKvBytes' accounting (per token slot, and exact rows per sequence slot), except that a
  // SALS rank is stored rounded up to a multiple of 8 (zero basis columns; the kernels read
  // latents 16 bytes at a time). `basis`: the stored rank's leading columns of each sparse
  // layer's U, uploaded as fp16 (unused without SALS layers). Zero-filled.
  static absl::StatusOr<KvArena> Allocate(const ModelConfig& config, const KvPoolConfig& pool,
                                          const SalsBasis& basis);

  const LayerKv& layer(int l) const { return layers_[l]; }
  int num_sparse() const { return num_sparse_; }
  int first_sparse_layer() const;  // -1: none
  // A non-null pool pointer for the planners, which read shapes only.
  const __half* any() const { return reinterpret_cast<const __half*>(arena_.get()); }

  // Overwrites every K/V element with random values in [-1, 1) on `stream` (latents, codes,
  // scales, zeros and exact rows of SALS layers alike; the bases stay); returns once done.
  absl::Status FillRandom(uint64_t seed, cudaStream_t stream);

 private:
  kernels::DeviceBuffer<uint8_t> arena_;  // every layer's KV storage (layers_ points into it)
  kernels::DeviceBuffer<__half> basis_;   // SALS bases, [layers x D x stored rank (padded)]
  std::vector<LayerKv> layers_;
  int num_sparse_ = 0;
};

}  // namespace sals::cuda
