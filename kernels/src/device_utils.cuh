// Device-side helpers shared by the kernels (internal to sals_kernels).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <initializer_list>
#include <type_traits>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "sals/kernels/cuda_utils.h"
#include "sals/kernels/dtype.h"

namespace sals::kernels::internal {

template <typename T>
__device__ __forceinline__ float ToFloat(T x) {
  if constexpr (std::is_same_v<T, float>) {
    return x;
  } else if constexpr (std::is_same_v<T, __half>) {
    return __half2float(x);
  } else {
    return __bfloat162float(x);
  }
}

template <typename T>
__device__ __forceinline__ T FromFloat(float x) {
  if constexpr (std::is_same_v<T, float>) {
    return x;
  } else if constexpr (std::is_same_v<T, __half>) {
    return __float2half_rn(x);
  } else {
    return __float2bfloat16_rn(x);
  }
}

// N elements of T moved as one load/store (N * sizeof(T) must be 2, 4, 8 or 16 bytes).
template <typename T, int N>
struct alignas(sizeof(T) * N) Vec {
  T v[N];
};

template <typename T, int N>
__device__ __forceinline__ Vec<T, N> LoadVec(const T* p) {
  return *reinterpret_cast<const Vec<T, N>*>(p);
}

template <typename T, int N>
__device__ __forceinline__ void StoreVec(T* p, const Vec<T, N>& x) {
  *reinterpret_cast<Vec<T, N>*>(p) = x;
}

// Largest power-of-two element count <= max_n that divides n and keeps `ptrs` aligned.
inline int VecWidth(int64_t n, int max_n, std::initializer_list<const void*> ptrs, size_t elem) {
  int w = max_n;
  while (w > 1) {
    bool ok = n % w == 0;
    for (const void* p : ptrs) ok = ok && reinterpret_cast<uintptr_t>(p) % (w * elem) == 0;
    if (ok) break;
    w /= 2;
  }
  return w;
}

template <typename T>
__device__ __forceinline__ T WarpSum(T x) {
#pragma unroll
  for (int off = 16; off > 0; off /= 2) x += __shfl_xor_sync(0xffffffffu, x, off);
  return x;
}

template <typename T>
__device__ __forceinline__ T WarpMax(T x) {
#pragma unroll
  for (int off = 16; off > 0; off /= 2) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, off));
  return x;
}

// Reduction over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the
// result. Starts with a barrier, so shared memory written before the call is visible after it.
template <bool kMax>
__device__ __forceinline__ float BlockReduce(float x) {
  __shared__ float partial[32];
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  x = kMax ? WarpMax(x) : WarpSum(x);
  __syncthreads();  // `partial` may still be read by a previous call
  if (lane == 0) partial[warp] = x;
  __syncthreads();
  const float identity = kMax ? -INFINITY : 0.0f;
  x = lane < static_cast<int>(blockDim.x / 32) ? partial[lane] : identity;
  return kMax ? WarpMax(x) : WarpSum(x);
}

__device__ __forceinline__ float BlockSum(float x) { return BlockReduce<false>(x); }
__device__ __forceinline__ float BlockMax(float x) { return BlockReduce<true>(x); }

// n / d and n % d for 0 <= n < 2^31 by multiply-high (the divisor is a run-time constant of a
// launch, and integer division is ~20 instructions on the GPU).
struct FastDiv {
  uint32_t d = 1;
  uint32_t mul = 0;
  uint32_t shift = 0;

  FastDiv() = default;
  explicit FastDiv(uint32_t divisor) : d(divisor) {
    while ((1ull << shift) < divisor) ++shift;
    mul = static_cast<uint32_t>(((1ull << 32) * ((1ull << shift) - divisor)) / divisor + 1);
  }
  __device__ __forceinline__ uint32_t Div(uint32_t n) const {
    return (__umulhi(n, mul) + n) >> shift;
  }
};

// Calls f(T{}) with T the CUDA type of an activation dtype (f16 or bf16).
template <typename F>
absl::Status DispatchActivation(DType dtype, const char* what, F&& f) {
  switch (dtype) {
    case DType::kF16:
      return f(__half{});
    case DType::kBF16:
      return f(__nv_bfloat16{});
    case DType::kF32:
      break;
  }
  return absl::InvalidArgumentError(
      absl::StrCat(what, ": unsupported activation dtype ", DTypeName(dtype)));
}

// The launch error of the kernel just enqueued (bad configuration, missing image).
inline absl::Status LastLaunchStatus(const char* kernel) {
  const cudaError_t err = cudaGetLastError();
  if (err == cudaSuccess) return absl::OkStatus();
  return CudaStatus(err, kernel, __FILE__, __LINE__);
}

inline int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace sals::kernels::internal
