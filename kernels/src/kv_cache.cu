#include <numeric>

#include "absl/strings/str_cat.h"
#include "device_utils.cuh"
#include "engine/common/fp8.h"
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
using internal::WarpMax;

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

// One KV head's row of a token as fp8 (engine/kv/fp8_quant.h, the reference): the row's largest
// finite |x| over the warp, scale = that / 448 rounded up to fp16, codes e4m3(x / scale).
template <typename T>
__device__ __forceinline__ void QuantizeHeadRowFp8(const T* __restrict__ x, int n, int lane,
                                                   uint8_t* __restrict__ codes,
                                                   __half* __restrict__ scale_out) {
  float amax = 0.0f;
  for (int i = lane; i < n; i += 32) {
    const float a = fabsf(ToFloat(x[i]));
    if (isfinite(a)) amax = fmaxf(amax, a);
  }
  amax = WarpMax(amax);
  __half scale_h = __float2half_ru(amax / kFp8E4M3Max);
  if (__hisinf(scale_h)) scale_h = __ushort_as_half(static_cast<unsigned short>(0x7bffu));
  const float scale = __half2float(scale_h);
  for (int i = lane; i < n; i += 32) {
    const float xv = ToFloat(x[i]);
    codes[i] = scale > 0.0f ? F32ToFp8E4M3(xv / scale) : (isnan(xv) ? kFp8E4M3Nan : uint8_t{0});
  }
  if (lane == 0) *scale_out = scale_h;
}

// One block per token, one warp per KV head.
template <typename T>
__global__ void WriteKvFp8Kernel(const T* __restrict__ k, const T* __restrict__ v,
                                 int64_t src_row_stride, int num_kv_heads, int head_dim,
                                 const int64_t* __restrict__ slots, uint8_t* __restrict__ k_codes,
                                 uint8_t* __restrict__ v_codes, __half* __restrict__ k_scales,
                                 __half* __restrict__ v_scales) {
  const int64_t t = blockIdx.x;
  const int64_t slot = slots[t];
  const int head = static_cast<int>(threadIdx.x / 32);
  if (slot < 0 || head >= num_kv_heads) return;
  const int lane = static_cast<int>(threadIdx.x % 32);
  const int64_t src = t * src_row_stride + static_cast<int64_t>(head) * head_dim;
  const int64_t row = slot * num_kv_heads + head;
  QuantizeHeadRowFp8(k + src, head_dim, lane, k_codes + row * head_dim, k_scales + row);
  QuantizeHeadRowFp8(v + src, head_dim, lane, v_codes + row * head_dim, v_scales + row);
}

}  // namespace

absl::Status WriteKvCacheFp8(DType src_dtype, const void* k, const void* v, int64_t src_row_stride,
                             int64_t num_tokens, int num_kv_heads, int head_dim,
                             const int64_t* slots, const PagedKvCacheFp8Pools& pools,
                             cudaStream_t stream) {
  if (num_tokens < 0 || num_tokens > INT32_MAX || num_kv_heads <= 0 || num_kv_heads > 32 ||
      head_dim <= 0 || src_row_stride < static_cast<int64_t>(num_kv_heads) * head_dim) {
    return absl::InvalidArgumentError(
        absl::StrCat("WriteKvCacheFp8: bad shape tokens=", num_tokens, " kv_heads=", num_kv_heads,
                     " (at most 32) head_dim=", head_dim, " src_row_stride=", src_row_stride));
  }
  if (num_tokens == 0) return absl::OkStatus();
  return DispatchActivation(src_dtype, "WriteKvCacheFp8", [&]<typename T>(T) {
    WriteKvFp8Kernel<T><<<num_tokens, num_kv_heads * 32, 0, stream>>>(
        static_cast<const T*>(k), static_cast<const T*>(v), src_row_stride, num_kv_heads, head_dim,
        slots, pools.k_codes, pools.v_codes, pools.k_scales, pools.v_scales);
    return LastLaunchStatus("WriteKvCacheFp8");
  });
}

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
