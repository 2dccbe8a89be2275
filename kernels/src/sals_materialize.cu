// Dense fp16 rows of cached SALS tokens (sals_materialize.h): exact copies, or keys rebuilt from
// latents with RoPE and values dequantized.

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "device_utils.cuh"
#include "sals/kernels/sals_materialize.h"

namespace sals::kernels {
namespace {

using internal::CeilDiv;
using internal::LastLaunchStatus;

constexpr int kTileTokens = 32;  // tokens per block (one KV head each)
constexpr int kRankTile = 32;    // latent dims staged per step of the rebuild
constexpr int kThreads = 256;
constexpr int kMaxHeadDim = 128;
constexpr int kItems = kTileTokens * kMaxHeadDim / kThreads;  // (token, dim) pairs per thread

constexpr int kInvalid = 0;
constexpr int kExact = 1;
constexpr int kLatent = 2;

struct MaterializeArgs {
  SalsKvCache cache;
  SalsSelectionPolicy policy;  // selection mode
  int max_cached = 0;
  const int32_t* ranks = nullptr;     // context mode: per sequence
  const int32_t* selected = nullptr;  // selection mode
  int max_topk = 0;
  const int32_t* dst_rows = nullptr;
  const float* inv_freq = nullptr;
  __half* k_out = nullptr;
  __half* v_out = nullptr;
};

// Block (tile, sequence, kv head): kTileTokens rows of one KV head. The rebuild is a small GEMM
// per block: [tile x rank] latents times U_head^T [rank x head_dim], staged kRankTile latent dims
// at a time in shared memory, accumulated in fp32 registers (thread item q = (token, dim)).
template <bool kSelection>
__global__ void __launch_bounds__(kThreads) MaterializeKernel(MaterializeArgs a) {
  __shared__ float lat[kTileTokens][kRankTile + 1];
  __shared__ float us[kMaxHeadDim][kRankTile + 1];
  __shared__ float kb[kTileTokens][kMaxHeadDim + 1];
  __shared__ int row_kind[kTileTokens];
  __shared__ int row_pos[kTileTokens];
  __shared__ int64_t row_src[kTileTokens];

  const SalsKvCache& c = a.cache;
  const int b = blockIdx.y;
  const int head = blockIdx.z;
  const int cached = min(c.kv_lens[b], a.max_cached);
  int count = cached;
  int rank = 0;
  SalsSelection sel;
  int n_sink = 0;
  int topk = 0;
  if constexpr (kSelection) {
    sel = SalsPlanSelection(a.policy, cached);
    n_sink = min(sel.sink_end, cached);
    topk = min(sel.topk, a.max_topk);
    count = n_sink + topk + max(0, cached - sel.recent_begin);
    rank = a.policy.rank;
  } else {
    rank = a.ranks[b];
  }
  rank = max(0, min(rank, c.rank));
  const int t0 = blockIdx.x * kTileTokens;
  if (t0 >= count) return;
  const int tid = threadIdx.x;
  const int hd = c.head_dim;
  const int half = hd / 2;
  const int width = c.width();

  if (tid < kTileTokens) {
    const int i = t0 + tid;
    int kind = kInvalid;
    int pos = -1;
    int64_t src = 0;
    if (i < count) {
      if constexpr (kSelection) {
        pos = i < n_sink          ? i
              : i < n_sink + topk ? a.selected[static_cast<int64_t>(b) * a.max_topk + i - n_sink]
                                  : sel.recent_begin + (i - n_sink - topk);
      } else {
        pos = i;
      }
      const int valid_from = c.exact_valid_from != nullptr ? c.exact_valid_from[b] : 0;
      if (pos < 0 || pos >= cached) {
        kind = kInvalid;  // not a valid selection: a zero row rather than a read anywhere
      } else if (pos < c.sink_tokens || (pos >= cached - c.recent_tokens && pos >= valid_from)) {
        kind = kExact;
        src = static_cast<int64_t>(c.exact_slots[b]) * c.exact_rows() +
              (pos < c.sink_tokens ? pos : c.sink_tokens + pos % c.recent_tokens);
      } else {
        kind = kLatent;
        const int32_t block = c.block_tables[b * c.block_table_stride + pos / c.block_size];
        src = static_cast<int64_t>(block) * c.block_size + pos % c.block_size;
      }
    }
    row_kind[tid] = kind;
    row_pos[tid] = pos;
    row_src[tid] = src;
  }
  const bool any_latent =
      __syncthreads_or(tid < kTileTokens && t0 + tid < count && row_kind[tid] == kLatent) != 0;

  // Keys before RoPE: kb[t][d] = sum_j U[head * hd + d][j] latent_t[j].
  if (any_latent) {
    float acc[kItems];
#pragma unroll
    for (int q = 0; q < kItems; ++q) acc[q] = 0.0f;
    for (int r0 = 0; r0 < rank; r0 += kRankTile) {
      __syncthreads();  // the previous step's tiles are no longer read
      for (int idx = tid; idx < kTileTokens * kRankTile; idx += kThreads) {
        const int t = idx / kRankTile;
        const int j = idx % kRankTile;
        lat[t][j] = row_kind[t] == kLatent && r0 + j < rank
                        ? __half2float(c.latent[row_src[t] * c.rank + r0 + j])
                        : 0.0f;
      }
      for (int idx = tid; idx < hd * kRankTile; idx += kThreads) {
        const int d = idx / kRankTile;
        const int j = idx % kRankTile;
        us[d][j] = r0 + j < rank
                       ? __half2float(
                             c.basis[static_cast<int64_t>(head * hd + d) * c.basis_stride + r0 + j])
                       : 0.0f;
      }
      __syncthreads();
#pragma unroll
      for (int q = 0; q < kItems; ++q) {
        const int item = tid + q * kThreads;
        if (item >= kTileTokens * hd) break;
        const int t = item / hd;
        const int d = item % hd;
        float s = acc[q];
#pragma unroll 8
        for (int j = 0; j < kRankTile; ++j) s = fmaf(us[d][j], lat[t][j], s);
        acc[q] = s;
      }
    }
#pragma unroll
    for (int q = 0; q < kItems; ++q) {
      const int item = tid + q * kThreads;
      if (item >= kTileTokens * hd) break;
      kb[item / hd][item % hd] = acc[q];
    }
  }
  __syncthreads();

  const int64_t dst0 = static_cast<int64_t>(a.dst_rows[b]) + t0;
  const int col0 = head * hd;
  const int per_byte = c.value_bits == 16 ? 1 : 8 / c.value_bits;
  const int mask = (1 << c.value_bits) - 1;
  const int64_t code_bytes = c.code_bytes();
  const int groups = c.groups();
  for (int item = tid; item < kTileTokens * hd; item += kThreads) {
    const int t = item / hd;
    const int d = item % hd;
    if (t0 + t >= count) break;  // items grow with t
    const int kind = row_kind[t];
    const int64_t src = row_src[t];
    const int col = col0 + d;
    float k = 0.0f;
    float v = 0.0f;
    if (kind == kExact) {
      k = __half2float(c.exact_k[src * width + col]);
      v = __half2float(c.exact_v[src * width + col]);
    } else if (kind == kLatent) {
      const int i = d < half ? d : d - half;
      const float x1 = kb[t][i];
      const float x2 = kb[t][i + half];
      float sn = 0.0f;
      float cs = 1.0f;
      sincosf(static_cast<float>(row_pos[t]) * a.inv_freq[i], &sn, &cs);
      k = d < half ? __fsub_rn(__fmul_rn(x1, cs), __fmul_rn(x2, sn))
                   : __fadd_rn(__fmul_rn(x2, cs), __fmul_rn(x1, sn));
      const uint8_t* codes = c.value_codes + src * code_bytes;
      if (c.value_bits == 16) {
        v = __half2float(reinterpret_cast<const __half*>(codes)[col]);
      } else {
        const int code = (codes[col / per_byte] >> ((col % per_byte) * c.value_bits)) & mask;
        const __half2 sz = c.value_scale_zero[src * groups + col / c.value_group_size];
        v = __fadd_rn(__fmul_rn(static_cast<float>(code), __low2float(sz)), __high2float(sz));
      }
    }
    const int64_t out = (dst0 + t) * width + col;
    a.k_out[out] = __float2half_rn(k);
    a.v_out[out] = __float2half_rn(v);
  }
}

absl::Status ValidateCommon(const char* what, const SalsKvCache& c, int batch, int max_cached,
                            const int32_t* dst_rows, const float* inv_freq, const __half* k_out,
                            const __half* v_out) {
  SALS_KERNELS_RETURN_IF_ERROR(ValidateSalsKvCache(c));
  if (c.head_dim > kMaxHeadDim || c.num_kv_heads > 65535) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": head_dim ", c.head_dim,
                                                   " above the supported ", kMaxHeadDim,
                                                   " or too many KV heads ", c.num_kv_heads));
  }
  if (batch < 0 || batch > 65535 || max_cached < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": bad batch ", batch, " or max_cached ", max_cached));
  }
  if (c.block_tables == nullptr || c.kv_lens == nullptr || c.exact_slots == nullptr ||
      dst_rows == nullptr || inv_freq == nullptr || k_out == nullptr || v_out == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": null pointer"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status SalsMaterializeContext(const SalsKvCache& cache, int batch, int max_cached,
                                    const int32_t* ranks, const int32_t* dst_rows,
                                    const float* inv_freq, __half* k_out, __half* v_out,
                                    cudaStream_t stream) {
  SALS_KERNELS_RETURN_IF_ERROR(ValidateCommon("SalsMaterializeContext", cache, batch, max_cached,
                                              dst_rows, inv_freq, k_out, v_out));
  if (ranks == nullptr) {
    return absl::InvalidArgumentError("SalsMaterializeContext: null ranks");
  }
  if (batch == 0 || max_cached == 0) return absl::OkStatus();
  MaterializeArgs a;
  a.cache = cache;
  a.max_cached = max_cached;
  a.ranks = ranks;
  a.dst_rows = dst_rows;
  a.inv_freq = inv_freq;
  a.k_out = k_out;
  a.v_out = v_out;
  const dim3 grid(CeilDiv(max_cached, kTileTokens), batch, cache.num_kv_heads);
  MaterializeKernel<false><<<grid, kThreads, 0, stream>>>(a);
  return LastLaunchStatus("MaterializeKernel<context>");
}

absl::Status SalsMaterializeSelection(const SalsKvCache& cache, const SalsSelectionPolicy& policy,
                                      int batch, int max_cached, const int32_t* selected,
                                      int max_topk, const int32_t* dst_rows, const float* inv_freq,
                                      __half* k_out, __half* v_out, cudaStream_t stream) {
  SALS_KERNELS_RETURN_IF_ERROR(ValidateCommon("SalsMaterializeSelection", cache, batch, max_cached,
                                              dst_rows, inv_freq, k_out, v_out));
  const SalsSelection longest = SalsPlanSelection(policy, max_cached);
  if (policy.rank < 1 || policy.rank > cache.rank || policy.sink_tokens < 0 ||
      policy.sink_tokens > cache.sink_tokens || policy.recent_tokens < 1 ||
      policy.recent_tokens > cache.recent_tokens) {
    return absl::InvalidArgumentError(
        absl::StrCat("SalsMaterializeSelection: policy rank ", policy.rank, " (stored ", cache.rank,
                     "), sinks ", policy.sink_tokens, " (stored ", cache.sink_tokens, "), recent ",
                     policy.recent_tokens, " (stored ", cache.recent_tokens, ")"));
  }
  if (selected == nullptr || max_topk < std::max(1, longest.topk)) {
    return absl::InvalidArgumentError(absl::StrCat("SalsMaterializeSelection: max_topk ", max_topk,
                                                   " below the plan's ", longest.topk,
                                                   " or null selection"));
  }
  // Rows of the longest list: never more than the cached tokens nor sinks + top-k + recent.
  const int64_t rows = std::min<int64_t>(
      max_cached, static_cast<int64_t>(policy.sink_tokens) + max_topk + policy.recent_tokens);
  if (batch == 0 || rows == 0) return absl::OkStatus();
  MaterializeArgs a;
  a.cache = cache;
  a.policy = policy;
  a.max_cached = max_cached;
  a.selected = selected;
  a.max_topk = max_topk;
  a.dst_rows = dst_rows;
  a.inv_freq = inv_freq;
  a.k_out = k_out;
  a.v_out = v_out;
  const dim3 grid(CeilDiv(rows, kTileTokens), batch, cache.num_kv_heads);
  MaterializeKernel<true><<<grid, kThreads, 0, stream>>>(a);
  return LastLaunchStatus("MaterializeKernel<selection>");
}

}  // namespace sals::kernels
