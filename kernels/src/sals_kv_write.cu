// Writers of the SALS storage (sals_kv.h): latent keys (U^T k_pre), group-quantized values and
// the exact sink/ring copies.

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "device_utils.cuh"
#include "sals/kernels/sals_kv.h"

namespace sals::kernels {
namespace {

using internal::CeilDiv;
using internal::DispatchActivation;
using internal::LastLaunchStatus;
using internal::ToFloat;

constexpr int kLatentTile = 32;  // tokens and latent dims per block of the projection
constexpr int kLatentThreads = 256;
constexpr int kTokensPerThread = kLatentTile * kLatentTile / kLatentThreads;

// latent[slot] = U^T k for a tile of 32 tokens x 32 latent dims: each step stages 32 key dims of
// the tokens and the matching 32 x 32 block of U in shared memory; thread (j, group) accumulates
// dim j of tokens group, group + 8, ... in fp32. A decode step has few tokens, so this is bound
// by reading U once per 32 tokens (D x rank halves), which the L2 holds.
template <typename T>
__global__ void __launch_bounds__(kLatentThreads)
    LatentKernel(const T* __restrict__ k_pre, int64_t src_row_stride, int64_t num_tokens,
                 const int64_t* __restrict__ slots, const __half* __restrict__ basis,
                 int64_t basis_stride, int width, int rank, __half* __restrict__ latent) {
  __shared__ float ks[kLatentTile][kLatentTile + 1];
  __shared__ float us[kLatentTile][kLatentTile];
  const int j0 = blockIdx.x * kLatentTile;
  const int64_t t0 = static_cast<int64_t>(blockIdx.y) * kLatentTile;
  const int j = threadIdx.x % kLatentTile;
  const int group = threadIdx.x / kLatentTile;
  float acc[kTokensPerThread] = {};
  for (int i0 = 0; i0 < width; i0 += kLatentTile) {
    __syncthreads();  // the previous step's tiles are no longer read
    for (int idx = threadIdx.x; idx < kLatentTile * kLatentTile; idx += kLatentThreads) {
      const int r = idx / kLatentTile;
      const int c = idx % kLatentTile;
      const int64_t t = t0 + r;
      ks[r][c] =
          t < num_tokens && i0 + c < width ? ToFloat(k_pre[t * src_row_stride + i0 + c]) : 0.0f;
      us[r][c] = i0 + r < width && j0 + c < rank
                     ? __half2float(basis[static_cast<int64_t>(i0 + r) * basis_stride + j0 + c])
                     : 0.0f;
    }
    __syncthreads();
#pragma unroll 8
    for (int i = 0; i < kLatentTile; ++i) {
      const float u = us[i][j];
#pragma unroll
      for (int q = 0; q < kTokensPerThread; ++q) {
        acc[q] = fmaf(u, ks[group + q * (kLatentThreads / kLatentTile)][i], acc[q]);
      }
    }
  }
  if (j0 + j >= rank) return;
#pragma unroll
  for (int q = 0; q < kTokensPerThread; ++q) {
    const int64_t t = t0 + group + q * (kLatentThreads / kLatentTile);
    if (t >= num_tokens) continue;
    const int64_t slot = slots[t];
    if (slot >= 0) latent[slot * rank + j0 + j] = __float2half_rn(acc[q]);
  }
}

// The same projection for a decode step's few tokens (at most kFewTokens): the tiled kernel would
// run rank / 32 blocks, each walking all D key dims alone. Here a block owns 8 latent dims and
// its warps split D: lane l of warp w reads row i of U (8 dims, 16 bytes) and key dim i of every
// token for the rows i = w * rows_per_warp + l + 32 m, accumulating [tokens x 8] in fp32; the
// warps' sums meet in shared memory.
constexpr int kFewTokens = 8;
constexpr int kFewThreads = 256;
constexpr int kFewWarps = kFewThreads / 32;

template <typename T>
__global__ void __launch_bounds__(kFewThreads)
    FewTokensLatentKernel(const T* __restrict__ k_pre, int64_t src_row_stride, int num_tokens,
                          const int64_t* __restrict__ slots, const __half* __restrict__ basis,
                          int64_t basis_stride, int width, int rank, __half* __restrict__ latent) {
  __shared__ float partial[kFewWarps][kFewTokens * 8];
  const int j0 = blockIdx.x * 8;
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const bool full_row = j0 + 8 <= rank && basis_stride % 8 == 0;
  float acc[kFewTokens][8] = {};
  for (int i = warp * 32 + lane; i < width; i += kFewThreads) {
    float u[8];
    const __half* row = basis + static_cast<int64_t>(i) * basis_stride + j0;
    if (full_row) {
      const uint4 raw = *reinterpret_cast<const uint4*>(row);
      const __half2* h = reinterpret_cast<const __half2*>(&raw);
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        const float2 f = __half22float2(h[c]);
        u[2 * c] = f.x;
        u[2 * c + 1] = f.y;
      }
    } else {
#pragma unroll
      for (int c = 0; c < 8; ++c) u[c] = j0 + c < rank ? __half2float(row[c]) : 0.0f;
    }
#pragma unroll
    for (int t = 0; t < kFewTokens; ++t) {
      const float k = t < num_tokens ? ToFloat(k_pre[t * src_row_stride + i]) : 0.0f;
#pragma unroll
      for (int c = 0; c < 8; ++c) acc[t][c] = fmaf(u[c], k, acc[t][c]);
    }
  }
  // Warp sums: each lane ends up owning 2 of the 64 values (a reduce-scatter), then shared memory.
  float v[kFewTokens * 8];
#pragma unroll
  for (int t = 0; t < kFewTokens; ++t) {
#pragma unroll
    for (int c = 0; c < 8; ++c) v[t * 8 + c] = acc[t][c];
  }
#pragma unroll
  for (int half = kFewTokens * 4, off = 16; off >= 1; half /= 2, off /= 2) {
    const bool up = (lane & off) != 0;
#pragma unroll
    for (int e = 0; e < half; ++e) {
      const float keep = up ? v[e + half] : v[e];
      const float send = up ? v[e] : v[e + half];
      v[e] = keep + __shfl_xor_sync(0xffffffffu, send, off);
    }
  }
  // Halving at offsets 16, 8, 4, 2, 1 leaves lane l the sums of values 2 l and 2 l + 1.
  partial[warp][2 * lane] = v[0];
  partial[warp][2 * lane + 1] = v[1];
  __syncthreads();
  if (threadIdx.x < kFewTokens * 8) {
    const int t = threadIdx.x / 8;
    const int c = threadIdx.x % 8;
    float sum = 0.0f;
#pragma unroll
    for (int w = 0; w < kFewWarps; ++w) sum += partial[w][threadIdx.x];
    if (t < num_tokens && j0 + c < rank && slots[t] >= 0) {
      latent[slots[t] * rank + j0 + c] = __float2half_rn(sum);
    }
  }
}

// sals::QuantizeValues on one group per thread, operation by operation in fp32 (the __f*_rn
// intrinsics keep the compiler from fusing a multiply and an add, which the reference does not).
template <typename T>
__global__ void QuantizeKernel(const T* __restrict__ v, int64_t src_row_stride, int64_t num_tokens,
                               const int64_t* __restrict__ slots, int groups, int group_size,
                               int bits, int64_t code_bytes, uint8_t* __restrict__ codes,
                               __half2* __restrict__ scale_zero) {
  const int64_t item = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (item >= num_tokens * groups) return;
  const int64_t t = item / groups;
  const int g = static_cast<int>(item % groups);
  const int64_t slot = slots[t];
  if (slot < 0) return;
  const T* x = v + t * src_row_stride + static_cast<int64_t>(g) * group_size;
  auto value = [&](int i) { return __half2float(__float2half_rn(ToFloat(x[i]))); };
  // std::minmax_element: the first smallest and the last largest (this matters for -0 vs +0).
  float lo = value(0);
  float hi = lo;
  for (int i = 1; i < group_size; ++i) {
    const float xi = value(i);
    if (xi < lo) lo = xi;
    if (!(xi < hi)) hi = xi;
  }
  const int levels = (1 << bits) - 1;
  const float levels_f = static_cast<float>(levels);
  // zero is the largest fp16 <= min.
  uint16_t zero_h = __half_as_ushort(__float2half_rn(lo));
  if (__half2float(__ushort_as_half(zero_h)) > lo) {
    zero_h = (zero_h & 0x8000u) ? zero_h + 1 : (zero_h == 0 ? 0x8001u : zero_h - 1);
  }
  const float zero = __half2float(__ushort_as_half(zero_h));
  uint16_t scale_h = __half_as_ushort(__float2half_rn(__fdiv_rn(__fsub_rn(hi, zero), levels_f)));
  if (__fadd_rn(__fmul_rn(__half2float(__ushort_as_half(scale_h)), levels_f), zero) < hi) {
    ++scale_h;
  }
  const float scale = __half2float(__ushort_as_half(scale_h));
  scale_zero[slot * groups + g] =
      __halves2half2(__ushort_as_half(scale_h), __ushort_as_half(zero_h));
  const float inv = scale > 0.0f ? __fdiv_rn(1.0f, scale) : 0.0f;
  uint8_t* out = codes + slot * code_bytes + static_cast<int64_t>(g) * group_size * bits / 8;
  const int per_byte = 8 / bits;
  for (int i = 0; i < group_size; i += per_byte) {
    uint32_t byte = 0;
    for (int e = 0; e < per_byte; ++e) {
      const int q =
          min(max(__float2int_rn(__fmul_rn(__fsub_rn(value(i + e), zero), inv)), 0), levels);
      byte |= static_cast<uint32_t>(q) << (e * bits);
    }
    out[i / per_byte] = static_cast<uint8_t>(byte);
  }
}

// value_bits 16: the values themselves, as fp16, in the code bytes. Also the exact-store copy
// (two rows per token, to two destinations). One block per token.
template <typename T>
__global__ void CopyRowsKernel(const T* __restrict__ a, const T* __restrict__ b,
                               int64_t src_row_stride, int width, const int64_t* __restrict__ rows,
                               __half* __restrict__ a_out, __half* __restrict__ b_out) {
  const int64_t t = blockIdx.x;
  const int64_t row = rows[t];
  if (row < 0) return;
  for (int i = threadIdx.x; i < width; i += blockDim.x) {
    a_out[row * width + i] = __float2half_rn(ToFloat(a[t * src_row_stride + i]));
    if (b != nullptr) b_out[row * width + i] = __float2half_rn(ToFloat(b[t * src_row_stride + i]));
  }
}

absl::Status ValidateWrite(const char* what, const SalsKvCache& cache, int64_t src_row_stride,
                           int64_t num_tokens) {
  SALS_KERNELS_RETURN_IF_ERROR(ValidateSalsKvCache(cache));
  if (num_tokens < 0 || num_tokens > int64_t{65535} * kLatentTile ||
      src_row_stride < cache.width()) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": bad shape tokens=", num_tokens,
                                                   " src_row_stride=", src_row_stride,
                                                   " width=", cache.width()));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ValidateSalsKvCache(const SalsKvCache& c) {
  const int width = c.width();
  if (c.num_kv_heads <= 0 || c.head_dim <= 0 || c.head_dim % 2 != 0 || c.block_size <= 0 ||
      c.rank <= 0 || c.rank % 8 != 0 || c.rank > width || c.basis_stride < c.rank ||
      c.basis_stride % 8 != 0 || c.sink_tokens < 0 || c.recent_tokens < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "SalsKvCache: bad shape kv_heads=", c.num_kv_heads, " head_dim=", c.head_dim,
        " block_size=", c.block_size, " rank=", c.rank, " (a multiple of 8 up to D)",
        " basis_stride=", c.basis_stride, " sinks=", c.sink_tokens, " recent=", c.recent_tokens));
  }
  if (c.value_bits != 16 &&
      (!(c.value_bits == 2 || c.value_bits == 4) || c.value_group_size <= 0 ||
       width % c.value_group_size != 0 || (c.value_group_size * c.value_bits) % 8 != 0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("SalsKvCache: value_bits must be 2, 4 or 16 and value_group_size divide ",
                     width, " in whole bytes; got ", c.value_bits, " and ", c.value_group_size));
  }
  if (c.latent == nullptr || c.value_codes == nullptr || c.exact_k == nullptr ||
      c.exact_v == nullptr || c.basis == nullptr ||
      (c.value_bits != 16 && c.value_scale_zero == nullptr)) {
    return absl::InvalidArgumentError("SalsKvCache: null storage pointer");
  }
  return absl::OkStatus();
}

absl::Status ValidateSalsPolicy(const SalsKvCache& c, const SalsSelectionPolicy& p) {
  if (p.rank <= 0 || p.rank > c.rank || p.rank % 8 != 0 || p.score_dims <= 0 ||
      p.score_dims > p.rank) {
    return absl::InvalidArgumentError(
        absl::StrCat("SalsSelectionPolicy: rank must be a multiple of 8 in [8, ", c.rank,
                     "] and score_dims in [1, rank]; got ", p.rank, " and ", p.score_dims));
  }
  if (!(p.topk_fraction >= 0.0 && p.topk_fraction <= 1.0) || p.token_budget < 0 ||
      (!p.select_all && p.topk_fraction == 0.0 && p.token_budget == 0)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "SalsSelectionPolicy: topk_fraction in [0, 1] and token_budget >= 0, one positive; got ",
        p.topk_fraction, " and ", p.token_budget));
  }
  if (p.sink_tokens < 0 || p.sink_tokens > c.sink_tokens || p.recent_tokens < 1 ||
      p.recent_tokens > c.recent_tokens) {
    return absl::InvalidArgumentError(absl::StrCat(
        "SalsSelectionPolicy: sink_tokens in [0, ", c.sink_tokens, "] and recent_tokens in [1, ",
        c.recent_tokens, "]; got ", p.sink_tokens, " and ", p.recent_tokens));
  }
  return absl::OkStatus();
}

absl::Status SalsWriteLatentValues(DType src_dtype, const SalsKvCache& cache, const void* k_pre,
                                   const void* v, int64_t src_row_stride, int64_t num_tokens,
                                   const int64_t* slots, cudaStream_t stream) {
  SALS_KERNELS_RETURN_IF_ERROR(
      ValidateWrite("SalsWriteLatentValues", cache, src_row_stride, num_tokens));
  if (num_tokens == 0) return absl::OkStatus();
  return DispatchActivation(src_dtype, "SalsWriteLatentValues", [&]<typename T>(T) {
    if (num_tokens <= kFewTokens) {
      FewTokensLatentKernel<T><<<CeilDiv(cache.rank, 8), kFewThreads, 0, stream>>>(
          static_cast<const T*>(k_pre), src_row_stride, static_cast<int>(num_tokens), slots,
          cache.basis, cache.basis_stride, cache.width(), cache.rank, cache.latent);
      SALS_KERNELS_RETURN_IF_ERROR(LastLaunchStatus("FewTokensLatentKernel"));
    } else {
      const dim3 grid(CeilDiv(cache.rank, kLatentTile), CeilDiv(num_tokens, kLatentTile));
      LatentKernel<T><<<grid, kLatentThreads, 0, stream>>>(
          static_cast<const T*>(k_pre), src_row_stride, num_tokens, slots, cache.basis,
          cache.basis_stride, cache.width(), cache.rank, cache.latent);
      SALS_KERNELS_RETURN_IF_ERROR(LastLaunchStatus("LatentKernel"));
    }
    if (cache.value_bits == 16) {
      CopyRowsKernel<T><<<num_tokens, 256, 0, stream>>>(
          static_cast<const T*>(v), nullptr, src_row_stride, cache.width(), slots,
          reinterpret_cast<__half*>(cache.value_codes), nullptr);
      return LastLaunchStatus("CopyRowsKernel");
    }
    const int64_t items = num_tokens * cache.groups();
    QuantizeKernel<T><<<CeilDiv(items, 128), 128, 0, stream>>>(
        static_cast<const T*>(v), src_row_stride, num_tokens, slots, cache.groups(),
        cache.value_group_size, cache.value_bits, cache.code_bytes(), cache.value_codes,
        cache.value_scale_zero);
    return LastLaunchStatus("QuantizeKernel");
  });
}

absl::Status SalsWriteExact(DType src_dtype, const SalsKvCache& cache, const void* k_post,
                            const void* v, int64_t src_row_stride, int64_t num_tokens,
                            const int64_t* exact_rows, cudaStream_t stream) {
  SALS_KERNELS_RETURN_IF_ERROR(ValidateWrite("SalsWriteExact", cache, src_row_stride, num_tokens));
  if (num_tokens == 0) return absl::OkStatus();
  return DispatchActivation(src_dtype, "SalsWriteExact", [&]<typename T>(T) {
    CopyRowsKernel<T><<<num_tokens, 256, 0, stream>>>(
        static_cast<const T*>(k_post), static_cast<const T*>(v), src_row_stride, cache.width(),
        exact_rows, cache.exact_k, cache.exact_v);
    return LastLaunchStatus("CopyRowsKernel");
  });
}

}  // namespace sals::kernels
