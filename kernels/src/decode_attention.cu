// Paged dense decode attention, flash-decoding style: one thread block per (context split, KV
// head, sequence) reads each K/V row of its split once and scores it against all query heads of
// the KV group; a combine kernel merges the splits' partial softmax results.
//
// Within a block, a K/V row of head_dim halves is spread over kLanes lanes of 16-byte loads (8
// halves each, for head_dim 64/128), so a warp covers 32 / kLanes tokens per load and each lane
// keeps an online softmax over the tokens its lane group sees. Loads for the next step are issued
// before the current step's arithmetic, so each warp keeps two steps of K and V in flight.

#include <algorithm>
#include <cmath>
#include <limits>

#include "attention_common.cuh"

namespace sals::kernels {
namespace {

using internal::CeilDiv;
using internal::FastDiv;
using internal::FromFloat;
using internal::kLog2e;
using internal::LastLaunchStatus;
using internal::ToFloat;

constexpr int kDecodeWarps = 4;
constexpr int kDecodeThreads = kDecodeWarps * 32;
constexpr int kChunkBlocks = 256;  // block ids staged in shared memory at a time
constexpr int kMaxSplits = 1024;
constexpr int kMinSplitTokens = 128;
constexpr int kSplitOverheadTokens = 32;  // a block's fixed cost, in tokens, for the planner
constexpr int kCombineThreads = 128;

constexpr int NextPow2(int x) {
  int p = 1;
  while (p < x) p *= 2;
  return p;
}

template <int kHeadDim>
struct DecodeLayout {
  static constexpr int kVec = kHeadDim % 8 == 0   ? 8
                              : kHeadDim % 4 == 0 ? 4
                              : kHeadDim % 2 == 0 ? 2
                                                  : 1;
  static constexpr int kChunks = kHeadDim / kVec;     // vectors per K/V row
  static constexpr int kLanes = NextPow2(kChunks);    // lanes sharing a token
  static constexpr int kTokensPerLoad = 32 / kLanes;  // tokens a warp covers per load
  static_assert(kLanes <= 32, "head_dim too large for one warp per token");
};

// Tokens per lane group and step: more for small groups (more bytes in flight), fewer for large
// ones (their query and accumulator registers). Group 4 measured 4-10% faster with 2 than with 4
// on the H200 (4 blocks per multiprocessor instead of 3).
template <int kGroup>
constexpr int kDecodeUnroll = kGroup <= 2 ? 4 : 2;

template <int kVec>
struct RawWords;
template <>
struct RawWords<8> {
  using Type = uint4;
};
template <>
struct RawWords<4> {
  using Type = uint2;
};
template <>
struct RawWords<2> {
  using Type = unsigned int;
};
template <>
struct RawWords<1> {
  using Type = unsigned short;
};

template <int kVec>
__device__ __forceinline__ void HalvesToFloats(const typename RawWords<kVec>::Type& w,
                                               float (&f)[kVec]) {
  if constexpr (kVec == 1) {
    f[0] = __half2float(__ushort_as_half(w));
  } else {
    const __half2* h = reinterpret_cast<const __half2*>(&w);
#pragma unroll
    for (int i = 0; i < kVec / 2; ++i) {
      const float2 x = __half22float2(h[i]);
      f[2 * i] = x.x;
      f[2 * i + 1] = x.y;
    }
  }
}

// Merges softmax state (m, l, acc) with another one scaled alike; m may be -inf (no tokens).
template <int kVec>
__device__ __forceinline__ void MergeState(float& m, float& l, float (&acc)[kVec], float m_o,
                                           float l_o, const float (&acc_o)[kVec]) {
  const float mx = fmaxf(m, m_o);
  const float ref = mx == -INFINITY ? 0.0f : mx;
  const float a = exp2f(m - ref);
  const float c = exp2f(m_o - ref);
  l = l * a + l_o * c;
  m = mx;
#pragma unroll
  for (int e = 0; e < kVec; ++e) acc[e] = acc[e] * a + acc_o[e] * c;
}

template <typename T, int kHeadDim, int kGroup>
__global__ void __launch_bounds__(kDecodeThreads)
    DecodeKernel(PagedKvCache cache, const T* __restrict__ q, int64_t q_row_stride,
                 float scale_log2, int num_splits, int tokens_per_split, FastDiv block_div,
                 T* __restrict__ out, float* __restrict__ partial_o,
                 float* __restrict__ partial_lse) {
  using L = DecodeLayout<kHeadDim>;
  using Raw = typename RawWords<L::kVec>::Type;
  constexpr int kVec = L::kVec;
  constexpr int kUnroll = kDecodeUnroll<kGroup>;
  constexpr int kWarpTokens = L::kTokensPerLoad * kUnroll;
  constexpr int kBlockTokens = kDecodeWarps * kWarpTokens;

  __shared__ int32_t block_ids[kChunkBlocks];
  __shared__ float s_acc[kDecodeWarps][kGroup][kHeadDim];
  __shared__ float s_m[kDecodeWarps][kGroup];
  __shared__ float s_l[kDecodeWarps][kGroup];

  const int split = blockIdx.x;
  const int kv_head = blockIdx.y;
  const int b = blockIdx.z;
  const int kv_len = cache.kv_lens[b];
  const int begin = split * tokens_per_split;
  // Split 0 always runs, so an empty context still writes its (zero) result.
  if (split > 0 && begin >= kv_len) return;
  const int end = split == num_splits - 1 ? kv_len : min(kv_len, begin + tokens_per_split);

  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int sub = lane / L::kLanes;    // which token of a load
  const int chunk = lane % L::kLanes;  // which vector of the row
  const bool active = chunk < L::kChunks;
  const int num_heads = cache.num_kv_heads * kGroup;

  // Query in fp32, pre-scaled so that scores are in log2 units (exp2 below).
  float qv[kGroup][kVec];
  const T* qp = q + b * q_row_stride + static_cast<int64_t>(kv_head) * kGroup * kHeadDim;
#pragma unroll
  for (int g = 0; g < kGroup; ++g) {
#pragma unroll
    for (int e = 0; e < kVec; ++e) {
      qv[g][e] = active ? ToFloat(qp[g * kHeadDim + chunk * kVec + e]) * scale_log2 : 0.0f;
    }
  }

  float m[kGroup];
  float l[kGroup];
  float acc[kGroup][kVec];
#pragma unroll
  for (int g = 0; g < kGroup; ++g) {
    m[g] = -INFINITY;
    l[g] = 0.0f;
#pragma unroll
    for (int e = 0; e < kVec; ++e) acc[g][e] = 0.0f;
  }

  const int32_t* table = cache.block_tables + b * cache.block_table_stride;
  const int64_t row = static_cast<int64_t>(cache.num_kv_heads) * kHeadDim;
  const int64_t head_offset = static_cast<int64_t>(kv_head) * kHeadDim + chunk * kVec;
  const __half* k_base = cache.k + head_offset;
  const __half* v_base = cache.v + head_offset;
  const int block_size = cache.block_size;

  for (int c0 = begin; c0 < end;) {
    const int first_block = block_div.Div(c0);
    const int64_t chunk_end = static_cast<int64_t>(first_block + kChunkBlocks) * block_size;
    const int c1 = chunk_end < end ? static_cast<int>(chunk_end) : end;
    const int num_blocks = block_div.Div(c1 - 1) - first_block + 1;
    __syncthreads();  // the previous chunk's block ids are no longer read
    for (int i = threadIdx.x; i < num_blocks; i += kDecodeThreads) {
      block_ids[i] = table[first_block + i];
    }
    __syncthreads();

    auto load = [&](int base, Raw(&kr)[kUnroll], Raw(&vr)[kUnroll]) {
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int tok = base + u * L::kTokensPerLoad + sub;
        if (active && tok < c1) {
          const int blk = block_div.Div(tok);
          const int64_t slot = static_cast<int64_t>(block_ids[blk - first_block]) * block_size +
                               (tok - blk * block_size);
          // Streaming loads: every K/V byte is used once, by this block.
          kr[u] = __ldcs(reinterpret_cast<const Raw*>(k_base + slot * row));
          vr[u] = __ldcs(reinterpret_cast<const Raw*>(v_base + slot * row));
        } else {
          kr[u] = Raw{};
          vr[u] = Raw{};
        }
      }
    };

    Raw kr[kUnroll];
    Raw vr[kUnroll];
    int base = c0 + warp * kWarpTokens;
    load(base, kr, vr);
    for (; base < c1; base += kBlockTokens) {
      Raw kn[kUnroll];
      Raw vn[kUnroll];
      load(base + kBlockTokens, kn, vn);

      float s[kUnroll][kGroup];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        float kf[kVec];
        HalvesToFloats<kVec>(kr[u], kf);
#pragma unroll
        for (int g = 0; g < kGroup; ++g) {
          float dot = 0.0f;
#pragma unroll
          for (int e = 0; e < kVec; ++e) dot = fmaf(qv[g][e], kf[e], dot);
          s[u][g] = dot;
        }
      }
#pragma unroll
      for (int off = L::kLanes / 2; off > 0; off /= 2) {
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
#pragma unroll
          for (int g = 0; g < kGroup; ++g) s[u][g] += __shfl_xor_sync(0xffffffffu, s[u][g], off);
        }
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        if (base + u * L::kTokensPerLoad + sub >= c1) {
#pragma unroll
          for (int g = 0; g < kGroup; ++g) s[u][g] = -INFINITY;
        }
      }

      float p[kUnroll][kGroup];
#pragma unroll
      for (int g = 0; g < kGroup; ++g) {
        float mx = m[g];
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) mx = fmaxf(mx, s[u][g]);
        const float ref = mx == -INFINITY ? 0.0f : mx;
        const float rescale = exp2f(m[g] - ref);
        float sum = 0.0f;
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
          p[u][g] = exp2f(s[u][g] - ref);
          sum += p[u][g];
        }
        l[g] = l[g] * rescale + sum;
        m[g] = mx;
#pragma unroll
        for (int e = 0; e < kVec; ++e) acc[g][e] *= rescale;
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        float vf[kVec];
        HalvesToFloats<kVec>(vr[u], vf);
#pragma unroll
        for (int g = 0; g < kGroup; ++g) {
#pragma unroll
          for (int e = 0; e < kVec; ++e) acc[g][e] = fmaf(p[u][g], vf[e], acc[g][e]);
        }
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        kr[u] = kn[u];
        vr[u] = vn[u];
      }
    }
    c0 = c1;
  }

  // Merge the warp's lane groups (lanes that differ in the `sub` bits), then the warps.
#pragma unroll
  for (int off = L::kLanes; off < 32; off *= 2) {
#pragma unroll
    for (int g = 0; g < kGroup; ++g) {
      float acc_o[kVec];
#pragma unroll
      for (int e = 0; e < kVec; ++e) acc_o[e] = __shfl_xor_sync(0xffffffffu, acc[g][e], off);
      const float m_o = __shfl_xor_sync(0xffffffffu, m[g], off);
      const float l_o = __shfl_xor_sync(0xffffffffu, l[g], off);
      MergeState<kVec>(m[g], l[g], acc[g], m_o, l_o, acc_o);
    }
  }
  if (sub == 0 && active) {
#pragma unroll
    for (int g = 0; g < kGroup; ++g) {
#pragma unroll
      for (int e = 0; e < kVec; ++e) s_acc[warp][g][chunk * kVec + e] = acc[g][e];
    }
  }
  if (lane == 0) {
#pragma unroll
    for (int g = 0; g < kGroup; ++g) {
      s_m[warp][g] = m[g];
      s_l[warp][g] = l[g];
    }
  }
  __syncthreads();
  for (int i = threadIdx.x; i < kGroup * kHeadDim; i += kDecodeThreads) {
    const int g = i / kHeadDim;
    const int d = i % kHeadDim;
    float mx = -INFINITY;
#pragma unroll
    for (int w = 0; w < kDecodeWarps; ++w) mx = fmaxf(mx, s_m[w][g]);
    const float ref = mx == -INFINITY ? 0.0f : mx;
    float sum = 0.0f;
    float o = 0.0f;
#pragma unroll
    for (int w = 0; w < kDecodeWarps; ++w) {
      const float weight = exp2f(s_m[w][g] - ref);
      sum += s_l[w][g] * weight;
      o += s_acc[w][g][d] * weight;
    }
    const float value = sum > 0.0f ? o / sum : 0.0f;
    const int64_t head_row = static_cast<int64_t>(b) * num_heads + kv_head * kGroup + g;
    if (num_splits == 1) {
      out[head_row * kHeadDim + d] = FromFloat<T>(value);
    } else {
      const int64_t part = head_row * num_splits + split;
      partial_o[part * kHeadDim + d] = value;
      if (d == 0) partial_lse[part] = sum > 0.0f ? mx + log2f(sum) : -INFINITY;
    }
  }
}

// One block per (sequence, head): weights each split by exp2(lse - max lse) and normalizes.
template <typename T>
__global__ void __launch_bounds__(kCombineThreads)
    CombineKernel(const float* __restrict__ partial_o, const float* __restrict__ partial_lse,
                  const int32_t* __restrict__ kv_lens, int num_heads, int head_dim, int num_splits,
                  int tokens_per_split, T* __restrict__ out) {
  extern __shared__ float weights[];  // num_splits
  const int64_t head_row = blockIdx.x;
  const int64_t kv_len = kv_lens[head_row / num_heads];
  const int64_t splits_with_tokens = (kv_len + tokens_per_split - 1) / tokens_per_split;
  const int valid =
      splits_with_tokens < num_splits ? static_cast<int>(splits_with_tokens) : num_splits;
  const float* lse = partial_lse + head_row * num_splits;
  float mx = -INFINITY;
  for (int s = threadIdx.x; s < valid; s += blockDim.x) mx = fmaxf(mx, lse[s]);
  mx = internal::BlockMax(mx);
  float sum = 0.0f;
  for (int s = threadIdx.x; s < valid; s += blockDim.x) {
    weights[s] = exp2f(lse[s] - mx);
    sum += weights[s];
  }
  sum = internal::BlockSum(sum);  // its barrier also publishes `weights`
  const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
  const float* o = partial_o + head_row * num_splits * head_dim;
  for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
    float value = 0.0f;
    for (int s = 0; s < valid; ++s) value = fmaf(weights[s], o[s * head_dim + d], value);
    out[head_row * head_dim + d] = FromFloat<T>(value * inv);
  }
}

}  // namespace

absl::StatusOr<DecodeAttentionPlan> PlanDecodeAttention(DType dtype, const PagedKvCache& cache,
                                                        int batch, int num_heads, int max_kv_len) {
  SALS_KERNELS_RETURN_IF_ERROR(
      internal::ValidateAttention("PlanDecodeAttention", cache, batch, num_heads));
  int blocks_per_sm = 0;
  SALS_KERNELS_RETURN_IF_ERROR(internal::DispatchAttention(
      "PlanDecodeAttention", dtype, cache.head_dim, num_heads / cache.num_kv_heads,
      [&]<typename T, int kHeadDim, int kGroup>() -> absl::Status {
        SALS_CUDA_RETURN_IF_ERROR(cudaOccupancyMaxActiveBlocksPerMultiprocessor(
            &blocks_per_sm, DecodeKernel<T, kHeadDim, kGroup>, kDecodeThreads, 0));
        return absl::OkStatus();
      }));
  int device = 0;
  int num_sms = 0;
  SALS_CUDA_RETURN_IF_ERROR(cudaGetDevice(&device));
  SALS_CUDA_RETURN_IF_ERROR(
      cudaDeviceGetAttribute(&num_sms, cudaDevAttrMultiProcessorCount, device));
  if (max_kv_len <= 0 || batch == 0) return DecodeAttentionPlan{1, std::max(1, max_kv_len)};

  // Blocks run in waves of `capacity`; the step takes about waves x (tokens per block + a fixed
  // cost). Pick the split count with the least such time, fewer splits on ties.
  const int64_t capacity = static_cast<int64_t>(std::max(1, blocks_per_sm)) * num_sms;
  const int64_t pairs = static_cast<int64_t>(batch) * cache.num_kv_heads;
  const int max_splits =
      static_cast<int>(std::clamp<int64_t>(CeilDiv(max_kv_len, kMinSplitTokens), 1, kMaxSplits));
  DecodeAttentionPlan best{1, max_kv_len};
  int64_t best_cost = std::numeric_limits<int64_t>::max();
  for (int s = 1; s <= max_splits; ++s) {
    const int tokens = static_cast<int>(CeilDiv(CeilDiv(max_kv_len, s), 32) * 32);
    const int splits = static_cast<int>(CeilDiv(max_kv_len, tokens));
    const int64_t cost = CeilDiv(pairs * splits, capacity) * (tokens + kSplitOverheadTokens);
    if (cost < best_cost) {
      best_cost = cost;
      best = DecodeAttentionPlan{splits, tokens};
    }
  }
  return best;
}

size_t DecodeAttentionWorkspaceBytes(const DecodeAttentionPlan& plan, int batch, int num_heads,
                                     int head_dim) {
  if (plan.num_splits <= 1) return 0;
  return static_cast<size_t>(batch) * num_heads * plan.num_splits * (head_dim + 1) * sizeof(float);
}

absl::Status DecodeAttention(DType dtype, const PagedKvCache& cache, int batch, int num_heads,
                             const void* q, int64_t q_row_stride, float scale,
                             const DecodeAttentionPlan& plan, void* workspace, void* out,
                             cudaStream_t stream) {
  SALS_KERNELS_RETURN_IF_ERROR(
      internal::ValidateAttention("DecodeAttention", cache, batch, num_heads));
  if (plan.num_splits < 1 || plan.num_splits > kMaxSplits || plan.tokens_per_split < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("DecodeAttention: bad plan splits=", plan.num_splits,
                     " tokens_per_split=", plan.tokens_per_split));
  }
  if (plan.num_splits > 1 && workspace == nullptr) {
    return absl::InvalidArgumentError("DecodeAttention: split plan without workspace");
  }
  if (q_row_stride < static_cast<int64_t>(num_heads) * cache.head_dim) {
    return absl::InvalidArgumentError("DecodeAttention: q_row_stride shorter than a q row");
  }
  if (batch == 0) return absl::OkStatus();
  return internal::DispatchAttention(
      "DecodeAttention", dtype, cache.head_dim, num_heads / cache.num_kv_heads,
      [&]<typename T, int kHeadDim, int kGroup>() -> absl::Status {
        float* partial_o = static_cast<float*>(workspace);
        float* partial_lse =
            partial_o == nullptr
                ? nullptr
                : partial_o + static_cast<int64_t>(batch) * num_heads * plan.num_splits * kHeadDim;
        const dim3 grid(plan.num_splits, cache.num_kv_heads, batch);
        DecodeKernel<T, kHeadDim, kGroup><<<grid, kDecodeThreads, 0, stream>>>(
            cache, static_cast<const T*>(q), q_row_stride, scale * internal::kLog2e,
            plan.num_splits, plan.tokens_per_split, FastDiv(cache.block_size), static_cast<T*>(out),
            partial_o, partial_lse);
        SALS_KERNELS_RETURN_IF_ERROR(LastLaunchStatus("DecodeKernel"));
        if (plan.num_splits == 1) return absl::OkStatus();
        // ptxas merges the tail of the per-split loop into one vector load that can read up to
        // three weights past the last split: allocate them (memcheck flags it otherwise).
        const size_t weights_bytes = CeilDiv(plan.num_splits, 4) * 4 * sizeof(float);
        CombineKernel<T><<<batch * num_heads, kCombineThreads, weights_bytes, stream>>>(
            partial_o, partial_lse, cache.kv_lens, num_heads, kHeadDim, plan.num_splits,
            plan.tokens_per_split, static_cast<T*>(out));
        return LastLaunchStatus("CombineKernel");
      });
}

}  // namespace sals::kernels
