#include <numeric>

#include "absl/strings/str_cat.h"
#include "device_utils.cuh"
#include "sals/kernels/paged_kv.h"

namespace sals::kernels {
namespace {

using internal::DispatchActivation;
using internal::FromFloat;
using internal::LastLaunchStatus;
using internal::LoadVec;
using internal::StoreVec;
using internal::ToFloat;
using internal::Vec;
using internal::VecWidth;

template <typename T, int V>
__device__ __forceinline__ Vec<__half, V> ToHalfVec(const Vec<T, V>& x) {
  if constexpr (std::is_same_v<T, __half>) {
    return x;
  } else {
    Vec<__half, V> h;
#pragma unroll
    for (int e = 0; e < V; ++e) h.v[e] = FromFloat<__half>(ToFloat(x.v[e]));
    return h;
  }
}

// One block per token; a token's K (and V) row is num_kv_heads * head_dim contiguous values on
// both sides, so the copy is a plain vectorized row copy to the slot's row.
template <typename T, int V>
__global__ void WriteKvKernel(const T* __restrict__ k, const T* __restrict__ v,
                              int64_t src_row_stride, int row, const int64_t* __restrict__ slots,
                              __half* __restrict__ k_pool, __half* __restrict__ v_pool) {
  const int64_t t = blockIdx.x;
  const int64_t slot = slots[t];
  if (slot < 0) return;
  const T* ks = k + t * src_row_stride;
  const T* vs = v + t * src_row_stride;
  __half* kd = k_pool + slot * row;
  __half* vd = v_pool + slot * row;
  for (int i = threadIdx.x * V; i < row; i += blockDim.x * V) {
    StoreVec(kd + i, ToHalfVec<T, V>(LoadVec<T, V>(ks + i)));
    StoreVec(vd + i, ToHalfVec<T, V>(LoadVec<T, V>(vs + i)));
  }
}

}  // namespace

absl::Status WriteKvCache(DType src_dtype, const void* k, const void* v, int64_t src_row_stride,
                          int64_t num_tokens, int num_kv_heads, int head_dim, const int64_t* slots,
                          __half* k_pool, __half* v_pool, cudaStream_t stream) {
  const int64_t row = static_cast<int64_t>(num_kv_heads) * head_dim;
  if (num_tokens < 0 || num_tokens > INT32_MAX || num_kv_heads <= 0 || head_dim <= 0 ||
      row > INT32_MAX || src_row_stride < row) {
    return absl::InvalidArgumentError(
        absl::StrCat("WriteKvCache: bad shape tokens=", num_tokens, " kv_heads=", num_kv_heads,
                     " head_dim=", head_dim, " src_row_stride=", src_row_stride));
  }
  if (num_tokens == 0) return absl::OkStatus();
  return DispatchActivation(src_dtype, "WriteKvCache", [&]<typename T>(T) {
    auto launch = [&]<int V>() {
      const int threads = static_cast<int>(std::min<int64_t>(256, (row / V + 31) / 32 * 32));
      WriteKvKernel<T, V><<<num_tokens, threads, 0, stream>>>(
          static_cast<const T*>(k), static_cast<const T*>(v), src_row_stride, static_cast<int>(row),
          slots, k_pool, v_pool);
      return LastLaunchStatus("WriteKvCache");
    };
    const int64_t n = std::gcd(row, src_row_stride);
    switch (VecWidth(n, 8, {k, v, k_pool, v_pool}, sizeof(T))) {
      case 8:
        return launch.template operator()<8>();
      case 4:
        return launch.template operator()<4>();
      case 2:
        return launch.template operator()<2>();
      default:
        return launch.template operator()<1>();
    }
  });
}

}  // namespace sals::kernels
