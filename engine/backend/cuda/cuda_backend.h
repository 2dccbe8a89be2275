// The CUDA backend's public face: options, the Backend extension it implements, and the C entry
// points of libsals_backend_cuda.so. Plain C++ with no CUDA headers, so that the engine can hold
// a CudaBackend through engine/backend/cuda_loader.h without linking CUDA (docs/GPU.md: a
// program linking cuBLAS directly breaks prometheus-cpp's exposer).
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/backend/backend.h"
#include "engine/common/dtype.h"
#include "engine/model/config.h"
#include "engine/model/weight_source.h"
#include "engine/sals/basis.h"

namespace sals {

struct CudaBackendOptions {
  DType dtype = DType::kF16;  // weights and activations: kF16 or kBF16 (the KV pool is fp16)
  int device = 0;
  // Pure-decode steps of up to max_graph_batch sequences replay a CUDA graph captured per
  // (padded batch, block-table width, attention split); larger or mixed steps run eagerly.
  bool cuda_graphs = true;
  int max_graph_batch = 256;
  // Records CUDA events around each step's device work (see LastStepMs).
  bool time_steps = false;
  // Latent bases; required when the pool's format has SALS layers (rank >= the stored rank), as
  // CpuBackendOptions::basis. Uploaded as fp16.
  SalsBasis sals_basis;
  // sals-calibrate: every step also adds each layer's pre-RoPE key products k k^T to a running
  // sum on the device (cuBLAS, fp32 accumulation within the step, fp64 across steps); read with
  // TakeKeyCovariance. CUDA graphs are off then (every step runs eagerly, unpadded).
  bool key_covariance = false;
};

// Per layer, the sum of k k^T over the pre-RoPE keys (all KV heads joined, width D = kv_width) of
// every token the steps ran: D x D, column-major (symmetric, both triangles filled).
struct KeyCovarianceSums {
  int64_t tokens = 0;
  std::vector<std::vector<double>> layers;
};

class CudaBackend : public Backend {
 public:
  // Like Forward, but returns one token per sequence: the argmax of its last new token's logits,
  // taken on the device, so that only the ids cross to the host.
  virtual absl::Status ForwardGreedy(const ForwardBatch& batch, std::vector<int32_t>* tokens) = 0;

  // Overwrites every K/V element of the pool with random values in [-1, 1) (SALS storage: every
  // latent, value code, scale, zero and exact row; the bases stay): a filled cache without a
  // prefill, for benchmarks.
  virtual absl::Status FillKvCacheRandom(uint64_t seed) = 0;

  // Device milliseconds of the last Forward/ForwardGreedy, from the upload of its metadata to its
  // results back on the host (CUDA events); needs options.time_steps.
  virtual absl::StatusOr<float> LastStepMs() const = 0;

  // With options.key_covariance: the sums accumulated since the backend was created or since the
  // last call, which zeroes them. FailedPrecondition without the option.
  virtual absl::StatusOr<KeyCovarianceSums> TakeKeyCovariance() = 0;
};

// Bumped whenever this header's types change, so that a stale library is refused at load time.
inline constexpr int kCudaBackendAbiVersion = 5;

}  // namespace sals

// The library's two exported symbols (looked up with dlsym by cuda_loader.cc); everything else in
// it is hidden.
#define SALS_CUDA_BACKEND_EXPORT __attribute__((visibility("default")))
extern "C" {
// Returns the kCudaBackendAbiVersion the library was built with.
SALS_CUDA_BACKEND_EXPORT int SalsCudaBackendAbiVersion();
// Uploads the weights and allocates the KV pool. Returns the backend (owned by the caller), or
// null with *status set.
SALS_CUDA_BACKEND_EXPORT sals::CudaBackend* SalsCreateCudaBackend(
    const sals::ModelConfig* config, const sals::WeightSource* weights,
    const sals::KvPoolConfig* pool, const sals::CudaBackendOptions* options, absl::Status* status);
}
