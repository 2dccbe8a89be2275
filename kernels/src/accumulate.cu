#include <algorithm>

#include "absl/strings/str_cat.h"
#include "device_utils.cuh"
#include "sals/kernels/accumulate.h"

namespace sals::kernels {
namespace {

__global__ void AccumulateF64Kernel(const float* __restrict__ x, int64_t n,
                                    double* __restrict__ sum) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    sum[i] += static_cast<double>(x[i]);
  }
}

}  // namespace

absl::Status AccumulateF64(const float* x, int64_t n, double* sum, cudaStream_t stream) {
  if (n < 0) return absl::InvalidArgumentError(absl::StrCat("AccumulateF64: n = ", n));
  if (n == 0) return absl::OkStatus();
  constexpr int kThreads = 256;
  const int64_t blocks = std::min<int64_t>(internal::CeilDiv(n, kThreads), 4096);
  AccumulateF64Kernel<<<static_cast<int>(blocks), kThreads, 0, stream>>>(x, n, sum);
  return internal::LastLaunchStatus("AccumulateF64");
}

}  // namespace sals::kernels
