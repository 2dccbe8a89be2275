// Running sums in fp64 of fp32 partial results (sals-calibrate's key covariance: cuBLAS
// accumulates a step's products in fp32, the run's total is kept in fp64).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/status/status.h"

namespace sals::kernels {

// sum[i] += x[i] for i in [0, n), on `stream`. Returns launch/argument errors only.
absl::Status AccumulateF64(const float* x, int64_t n, double* sum, cudaStream_t stream);

}  // namespace sals::kernels
