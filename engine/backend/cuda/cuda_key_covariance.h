// The key covariance sals-calibrate asks for (CudaBackendOptions::key_covariance): per layer,
// C += K^T K over a step's pre-RoPE key rows, taken from the fused q|k|v rows right after their
// projection. cuBLAS multiplies in fp32 into a D x D scratch (one step's tokens), which a kernel
// adds into the layer's fp64 running sum; the sums stay on the device until Take.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/backend/cuda/cuda_backend.h"
#include "engine/backend/cuda/cuda_resources.h"
#include "engine/common/dtype.h"
#include "engine/model/config.h"
#include "sals/kernels/cuda_utils.h"

namespace sals::cuda {

class KeyCovarianceCapture {
 public:
  // The fp64 sums (num_layers x D x D, zeroed) and the step scratch; a cuBLAS handle on `stream`.
  static absl::StatusOr<KeyCovarianceCapture> Create(const ModelConfig& config, DType dtype,
                                                     cudaStream_t stream);

  // Enqueues layer `layer`'s update from `tokens` rows of q|k|v (q_width + 2 * kv_width elements
  // each, pre-RoPE, dtype as created). Layer 0 counts the tokens.
  absl::Status Add(int layer, const uint16_t* qkv, int64_t tokens);

  // Waits for the stream, copies the sums to the host and zeroes them on the device.
  absl::StatusOr<KeyCovarianceSums> Take();

 private:
  KeyCovarianceCapture(const ModelConfig& config, DType dtype, cudaStream_t stream)
      : config_(config), dtype_(dtype), stream_(stream) {}

  ModelConfig config_;
  DType dtype_;
  cudaStream_t stream_;
  CublasHandle cublas_;
  kernels::DeviceBuffer<float> step_;   // D x D: one layer's product of the step
  kernels::DeviceBuffer<double> sums_;  // num_layers x D x D
  int64_t tokens_ = 0;
};

}  // namespace sals::cuda
