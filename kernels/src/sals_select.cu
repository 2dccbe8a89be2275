// Stages 1-3 of the SALS decode step (sals_decode.h): the latent query, the latent scores of every
// middle token, and the top-k radix select.

#include <cooperative_groups.h>

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "device_utils.cuh"
#include "sals/kernels/sals_decode.h"

namespace sals::kernels {
namespace {

using internal::CeilDiv;
using internal::DispatchActivation;
using internal::FastDiv;
using internal::LastLaunchStatus;
using internal::ToFloat;

// ---- Stage 1: q~ = U[:, :score_dims]^T q_sum, U read once for the whole batch.

constexpr int kQueryRows = 64;   // rows of U (key dims) per block
constexpr int kQueryBatch = 16;  // sequences per block
constexpr int kQueryThreads = 256;

// Block (chunk, sequence group): the group sums of kQueryRows key dims for up to kQueryBatch
// sequences, then partial[chunk][b][j] = sum over those dims of U[i][j] q_sum[b][i]. Each thread
// owns columns j, so the U rows are read coalesced.
template <typename T, int kGroup>
__global__ void __launch_bounds__(kQueryThreads)
    QueryPartialKernel(const T* __restrict__ q_pre, int64_t q_row_stride, int batch, int head_dim,
                       int width, const __half* __restrict__ basis, int64_t basis_stride,
                       int score_dims, int score_stride, float* __restrict__ partial) {
  __shared__ float qs[kQueryBatch][kQueryRows];
  const int i0 = blockIdx.x * kQueryRows;
  const int b0 = blockIdx.y * kQueryBatch;
  const int rows = min(kQueryRows, width - i0);
  const int seqs = min(kQueryBatch, batch - b0);
  for (int idx = threadIdx.x; idx < kQueryBatch * kQueryRows; idx += kQueryThreads) {
    const int bb = idx / kQueryRows;
    const int r = idx % kQueryRows;
    float sum = 0.0f;
    if (bb < seqs && r < rows) {
      const int i = i0 + r;
      // Key dim i = kv_head * head_dim + d gathers query heads kv_head * kGroup + g, in order.
      const T* q = q_pre + static_cast<int64_t>(b0 + bb) * q_row_stride +
                   static_cast<int64_t>(i / head_dim) * kGroup * head_dim + i % head_dim;
#pragma unroll
      for (int g = 0; g < kGroup; ++g) sum += ToFloat(q[g * head_dim]);
    }
    qs[bb][r] = sum;
  }
  __syncthreads();
  constexpr int kRowsInFlight = 8;  // U loads issued before their products
  for (int j = threadIdx.x; j < score_stride; j += kQueryThreads) {
    float acc[kQueryBatch] = {};
    if (j < score_dims) {
      for (int r0 = 0; r0 < rows; r0 += kRowsInFlight) {
        float u[kRowsInFlight];
#pragma unroll
        for (int x = 0; x < kRowsInFlight; ++x) {
          u[x] = r0 + x < rows
                     ? __half2float(basis[static_cast<int64_t>(i0 + r0 + x) * basis_stride + j])
                     : 0.0f;
        }
        // qs is zero past `rows`, so the padded products add nothing.
#pragma unroll
        for (int x = 0; x < kRowsInFlight; ++x) {
#pragma unroll
          for (int bb = 0; bb < kQueryBatch; ++bb) acc[bb] = fmaf(u[x], qs[bb][r0 + x], acc[bb]);
        }
      }
    }
    for (int bb = 0; bb < seqs; ++bb) {
      partial[(static_cast<int64_t>(blockIdx.x) * batch + b0 + bb) * score_stride + j] = acc[bb];
    }
  }
}

// q_latent[b][j] = the chunks' partial sums, added in chunk order (deterministic).
__global__ void QueryReduceKernel(const float* __restrict__ partial, int chunks, int batch,
                                  int score_stride, float* __restrict__ q_latent) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t n = static_cast<int64_t>(batch) * score_stride;
  if (idx >= n) return;
  float sum = 0.0f;
  for (int c = 0; c < chunks; ++c) sum += partial[c * n + idx];
  q_latent[idx] = sum;
}

// ---- Stage 2: one score per middle token.

constexpr int kScoreThreads = 256;
constexpr int kScoreWarps = kScoreThreads / 32;
constexpr int kScoreUnroll = 8;
constexpr int kMaxScoreBlockTokens = 512;
constexpr int kMaxScoreStride = 1024;
constexpr int kMaxLaneVectors = kMaxScoreStride / 8 / 32;  // q~ vectors a lane holds

// A token's first score_stride latent values are read as 16-byte vectors by a group of kLanes
// lanes (the fewest lanes that cover them in one load, up to a warp); each lane keeps its part of
// q~ in registers (zero past score_dims) and each warp kScoreUnroll tokens per lane group in
// flight. Bandwidth-bound: every latent byte is read once.
template <int kLanes>
__global__ void __launch_bounds__(kScoreThreads)
    ScoreKernel(SalsKvCache cache, SalsSelectionPolicy policy, int max_cached, FastDiv block_div,
                int block_tokens, const float* __restrict__ q_latent, int score_stride,
                int max_middle, float* __restrict__ scores) {
  constexpr int kTokensPerLoad = 32 / kLanes;
  constexpr int kWarpTokens = kTokensPerLoad * kScoreUnroll;
  __shared__ int32_t block_ids[kMaxScoreBlockTokens + 2];
  const int b = blockIdx.y;
  const int cached = min(cache.kv_lens[b], max_cached);
  const SalsSelection sel = SalsPlanSelection(policy, cached);
  const int m0 = blockIdx.x * block_tokens;
  const int m1 = min(sel.middle(), m0 + block_tokens);
  if (m0 >= m1) return;
  const int first_block = block_div.Div(sel.sink_end + m0);
  const int num_blocks = block_div.Div(sel.sink_end + m1 - 1) - first_block + 1;
  const int32_t* table = cache.block_tables + b * cache.block_table_stride;
  for (int i = threadIdx.x; i < num_blocks; i += kScoreThreads) {
    block_ids[i] = table[first_block + i];
  }

  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int sub = lane / kLanes;
  const int part = lane % kLanes;
  const int vectors = score_stride / 8;
  float qv[kMaxLaneVectors][8];
#pragma unroll
  for (int i = 0; i < kMaxLaneVectors; ++i) {
    const int v = part + i * kLanes;
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      qv[i][e] = v < vectors ? q_latent[static_cast<int64_t>(b) * score_stride + 8 * v + e] : 0.0f;
    }
  }
  __syncthreads();

  for (int base = m0 + warp * kWarpTokens; base < m1; base += kScoreWarps * kWarpTokens) {
    const __half* rows[kScoreUnroll];
#pragma unroll
    for (int u = 0; u < kScoreUnroll; ++u) {
      const int m = base + u * kTokensPerLoad + sub;
      rows[u] = nullptr;
      if (m < m1) {
        const int pos = sel.sink_end + m;
        const int blk = block_div.Div(pos);
        const int64_t slot = static_cast<int64_t>(block_ids[blk - first_block]) * cache.block_size +
                             (pos - blk * cache.block_size);
        rows[u] = cache.latent + slot * cache.rank;
      }
    }
    float acc[kScoreUnroll] = {};
#pragma unroll
    for (int i = 0; i < kMaxLaneVectors; ++i) {
      const int v = part + i * kLanes;
      if (v >= vectors) break;
      uint4 raw[kScoreUnroll];
#pragma unroll
      for (int u = 0; u < kScoreUnroll; ++u) {
        raw[u] =
            rows[u] != nullptr ? __ldcs(reinterpret_cast<const uint4*>(rows[u] + 8 * v)) : uint4{};
      }
#pragma unroll
      for (int u = 0; u < kScoreUnroll; ++u) {
        const __half2* h = reinterpret_cast<const __half2*>(&raw[u]);
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const float2 f = __half22float2(h[e]);
          acc[u] = fmaf(qv[i][2 * e], f.x, acc[u]);
          acc[u] = fmaf(qv[i][2 * e + 1], f.y, acc[u]);
        }
      }
    }
#pragma unroll
    for (int u = 0; u < kScoreUnroll; ++u) {
#pragma unroll
      for (int off = kLanes / 2; off > 0; off /= 2) {
        acc[u] += __shfl_xor_sync(0xffffffffu, acc[u], off);
      }
      const int m = base + u * kTokensPerLoad + sub;
      if (part == 0 && m < m1) scores[static_cast<int64_t>(b) * max_middle + m] = acc[u];
    }
  }
}

// ---- Stage 3: radix select of the topk largest scores, one cluster of blocks per sequence.

constexpr int kTopKThreads = 1024;
constexpr int kTopKWarps = kTopKThreads / 32;
constexpr int kTopKItems = 8;            // keys per thread loaded together in a histogram pass
constexpr int kCompactItems = 4;         // consecutive keys per thread in the ordered pass
constexpr int kTopKSmemKeys = 49152;     // a block's keys stay in shared memory up to this many
constexpr int kTopKMaxCluster = 8;       // blocks per sequence (portable cluster size)
constexpr int kTopKKeysPerBlock = 4096;  // the planner's target: more keys, more blocks

// Order-preserving key: larger score, larger key. NaN gets 0, below every number (-inf
// included), and -0 the key of +0: equal keys are exactly the scores sals::SelectTopK ties.
__device__ __forceinline__ uint32_t OrderKey(float x) {
  if (isnan(x)) return 0;
  if (x == 0.0f) x = 0.0f;
  const uint32_t u = __float_as_uint(x);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// Exclusive prefix sum over the block (kTopKThreads threads); *total gets the sum. Starts and
// ends with a barrier, so `scratch` may be reused by the next call.
__device__ __forceinline__ uint32_t BlockExclusiveScan(uint32_t x, uint32_t* scratch,
                                                       uint32_t* total) {
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  uint32_t inc = x;
#pragma unroll
  for (int off = 1; off < 32; off *= 2) {
    const uint32_t y = __shfl_up_sync(0xffffffffu, inc, off);
    if (lane >= off) inc += y;
  }
  __syncthreads();
  if (lane == 31) scratch[warp] = inc;
  __syncthreads();
  if (warp == 0) {
    uint32_t w = lane < kTopKWarps ? scratch[lane] : 0;
#pragma unroll
    for (int off = 1; off < 32; off *= 2) {
      const uint32_t y = __shfl_up_sync(0xffffffffu, w, off);
      if (lane >= off) w += y;
    }
    scratch[lane] = w;  // inclusive over warps
  }
  __syncthreads();
  *total = scratch[kTopKWarps - 1];
  const uint32_t result = (warp > 0 ? scratch[warp - 1] : 0) + inc - x;
  __syncthreads();
  return result;
}

// Four passes of 8-bit digits (most significant first) narrow the candidates down to the key T
// of the topk-th largest score and the number `remaining` of T-valued scores to take; a final
// ordered pass writes every score > T and the first `remaining` scores == T, in position order.
// A cluster of blocks shares a sequence (long contexts: one block would take tens of
// microseconds alone): each block owns a contiguous part of the scores, adds its digit histogram
// into the first block's shared memory and reads the sum back, so every block narrows to the
// same T; the parts' counts of keys > T and == T then place each part's outputs. With
// keys_in_smem a block's first pass leaves its keys in shared memory for the others.
__global__ void __launch_bounds__(kTopKThreads)
    TopKKernel(SalsKvCache cache, SalsSelectionPolicy policy, int max_cached,
               const float* __restrict__ scores, int max_middle, int32_t* __restrict__ selected,
               int max_topk, bool keys_in_smem) {
  namespace cg = cooperative_groups;
  extern __shared__ uint32_t smem_keys[];
  __shared__ uint32_t hist[256];
  __shared__ uint32_t cluster_hist[4][256];             // the first block's: the cluster's sums
  __shared__ uint32_t part_counts[kTopKMaxCluster][2];  // the first block's: > T, == T per part
  __shared__ uint32_t scratch[32];
  __shared__ uint32_t s_prefix;
  __shared__ uint32_t s_remaining;
  const cg::cluster_group cluster = cg::this_cluster();
  const int parts = static_cast<int>(cluster.num_blocks());
  const int part = static_cast<int>(cluster.block_rank());
  const int b = blockIdx.x / parts;
  const SalsSelection sel = SalsPlanSelection(policy, min(cache.kv_lens[b], max_cached));
  const int n = sel.middle();
  const int k = sel.topk;
  const float* s = scores + static_cast<int64_t>(b) * max_middle;
  int32_t* out = selected + static_cast<int64_t>(b) * max_topk;
  if (k == 0) return;  // the whole cluster returns: these depend on the sequence only
  const int per_part = (n + parts - 1) / parts;
  const int lo = min(n, part * per_part);
  const int hi = min(n, lo + per_part);
  if (k >= n) {
    for (int i = lo + threadIdx.x; i < hi; i += kTopKThreads) out[i] = sel.sink_end + i;
    return;
  }
  auto key_at = [&](int i) { return keys_in_smem ? smem_keys[i - lo] : OrderKey(s[i]); };
  if (keys_in_smem) {
    for (int i0 = lo; i0 < hi; i0 += kTopKThreads * kTopKItems) {
      float x[kTopKItems];
#pragma unroll
      for (int u = 0; u < kTopKItems; ++u) {
        const int i = i0 + u * kTopKThreads + threadIdx.x;
        x[u] = i < hi ? s[i] : 0.0f;
      }
#pragma unroll
      for (int u = 0; u < kTopKItems; ++u) {
        const int i = i0 + u * kTopKThreads + threadIdx.x;
        if (i < hi) smem_keys[i - lo] = OrderKey(x[u]);
      }
    }
    // The first pass's barrier publishes the keys.
  }
  if (parts > 1) {
    for (int i = threadIdx.x; i < 4 * 256; i += kTopKThreads) (&cluster_hist[0][0])[i] = 0;
    cluster.sync();
  }
  const int lane = threadIdx.x % 32;
  uint32_t prefix = 0;
  uint32_t mask = 0;
  uint32_t remaining = k;
  for (int pass = 0, shift = 24; shift >= 0; ++pass, shift -= 8) {
    for (int i = threadIdx.x; i < 256; i += kTopKThreads) hist[i] = 0;
    __syncthreads();
    for (int i0 = lo; i0 < hi; i0 += kTopKThreads * kTopKItems) {
      uint32_t keys[kTopKItems];
#pragma unroll
      for (int u = 0; u < kTopKItems; ++u) {
        const int i = i0 + u * kTopKThreads + threadIdx.x;
        keys[u] = i < hi ? key_at(i) : 0;
      }
#pragma unroll
      for (int u = 0; u < kTopKItems; ++u) {
        const int i = i0 + u * kTopKThreads + threadIdx.x;
        const bool candidate = i < hi && (keys[u] & mask) == prefix;
        const uint32_t digit = (keys[u] >> shift) & 255u;
        // Scores of one magnitude share their top digits: aggregate equal digits of a warp into
        // one shared-memory atomic instead of 32 serialized ones.
        const unsigned voters = __ballot_sync(0xffffffffu, candidate);
        if (candidate) {
          const unsigned peers = __match_any_sync(voters, digit);
          if (lane == __ffs(peers) - 1) atomicAdd(&hist[digit], __popc(peers));
        }
      }
    }
    __syncthreads();
    const uint32_t* sums = hist;
    if (parts > 1) {
      uint32_t* cluster_sums = cluster.map_shared_rank(&cluster_hist[pass][0], 0);
      for (int i = threadIdx.x; i < 256; i += kTopKThreads) {
        if (hist[i] != 0) atomicAdd(&cluster_sums[i], hist[i]);
      }
      cluster.sync();
      sums = cluster_sums;
    }
    // Thread t looks at digit 255 - t: the exclusive scan counts candidates with larger digits.
    const uint32_t count = threadIdx.x < 256 ? sums[255 - threadIdx.x] : 0;
    uint32_t total = 0;
    const uint32_t above = BlockExclusiveScan(count, scratch, &total);
    if (threadIdx.x < 256 && above < remaining && above + count >= remaining) {
      s_prefix = prefix | ((255u - threadIdx.x) << shift);
      s_remaining = remaining - above;
    }
    __syncthreads();
    prefix = s_prefix;
    remaining = s_remaining;
    mask |= 255u << shift;
  }

  // Where this part's outputs start: the parts before it write their keys > T and, in position
  // order, the first `remaining` keys == T.
  uint32_t written = 0;
  uint32_t equal_seen = 0;
  if (parts > 1) {
    uint32_t greater = 0;
    uint32_t equal = 0;
    for (int i = lo + threadIdx.x; i < hi; i += kTopKThreads) {
      const uint32_t key = key_at(i);
      greater += key > prefix;
      equal += key == prefix;
    }
    uint32_t greater_total = 0;
    uint32_t equal_total = 0;
    BlockExclusiveScan(greater, scratch, &greater_total);
    BlockExclusiveScan(equal, scratch, &equal_total);
    uint32_t* counts = cluster.map_shared_rank(&part_counts[0][0], 0);
    if (threadIdx.x == 0) {
      counts[2 * part] = greater_total;
      counts[2 * part + 1] = equal_total;
    }
    cluster.sync();
    uint32_t greater_before = 0;
    for (int r = 0; r < part; ++r) {
      greater_before += counts[2 * r];
      equal_seen += counts[2 * r + 1];
    }
    written = greater_before + min(equal_seen, remaining);
  }

  // Ordered compaction: thread t takes kCompactItems consecutive keys of a chunk; one scan per
  // chunk of (count > T, count == T) packed in 16-bit halves places its outputs.
  for (int base = lo; base < hi; base += kTopKThreads * kCompactItems) {
    const int first = base + threadIdx.x * kCompactItems;
    uint32_t keys[kCompactItems];
    uint32_t greater = 0;
    uint32_t equal = 0;
#pragma unroll
    for (int u = 0; u < kCompactItems; ++u) {
      keys[u] = first + u < hi ? key_at(first + u) : 0;
      greater += first + u < hi && keys[u] > prefix;
      equal += first + u < hi && keys[u] == prefix;
    }
    uint32_t total = 0;
    const uint32_t before = BlockExclusiveScan(greater | (equal << 16), scratch, &total);
    const uint32_t equal_left = remaining > equal_seen ? remaining - equal_seen : 0;
    uint32_t equal_rank = before >> 16;  // equal keys before this one in the sequence's chunk
    uint32_t at = written + (before & 0xffffu) + min(equal_rank, equal_left);
#pragma unroll
    for (int u = 0; u < kCompactItems; ++u) {
      if (first + u >= hi) break;
      const bool is_equal = keys[u] == prefix;
      if (keys[u] > prefix || (is_equal && equal_rank < equal_left)) {
        out[at++] = sel.sink_end + first + u;
      }
      equal_rank += is_equal;
    }
    written += (total & 0xffffu) + min(total >> 16, equal_left);
    equal_seen += total >> 16;
  }
  if (parts > 1) cluster.sync();  // the first block's shared memory outlives every remote read
}

absl::Status ValidateStage(const char* what, const SalsKvCache& cache,
                           const SalsSelectionPolicy& policy, const SalsDecodePlan& plan) {
  SALS_KERNELS_RETURN_IF_ERROR(ValidateSalsKvCache(cache));
  SALS_KERNELS_RETURN_IF_ERROR(ValidateSalsPolicy(cache, policy));
  if (cache.block_tables == nullptr || cache.kv_lens == nullptr || cache.exact_slots == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": null per-sequence pointer"));
  }
  const SalsSelection sel = SalsPlanSelection(policy, std::max(0, plan.max_cached));
  if (plan.batch < 0 || plan.batch > 65535 || plan.max_cached < 0 ||
      plan.max_middle < sel.middle() || plan.max_topk < sel.topk ||
      plan.score_stride < policy.score_dims || plan.score_stride > kMaxScoreStride ||
      plan.score_stride % 8 != 0 || plan.score_block_tokens < 1 ||
      plan.score_block_tokens > kMaxScoreBlockTokens) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": plan does not fit: batch=", plan.batch,
                                                   " score_stride=", plan.score_stride));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status SalsLatentQuery(DType dtype, const SalsKvCache& cache,
                             const SalsSelectionPolicy& policy, const SalsDecodePlan& plan,
                             const void* q_pre, int64_t q_row_stride, float* partial,
                             float* q_latent, cudaStream_t stream) {
  SALS_KERNELS_RETURN_IF_ERROR(ValidateStage("SalsLatentQuery", cache, policy, plan));
  const int group = plan.num_heads / cache.num_kv_heads;
  if (plan.num_heads % cache.num_kv_heads != 0 ||
      q_row_stride < static_cast<int64_t>(plan.num_heads) * cache.head_dim) {
    return absl::InvalidArgumentError("SalsLatentQuery: bad heads or q_row_stride");
  }
  if (plan.batch == 0) return absl::OkStatus();
  const int chunks = static_cast<int>(CeilDiv(cache.width(), kQueryRows));
  return DispatchActivation(dtype, "SalsLatentQuery", [&]<typename T>(T) -> absl::Status {
    auto launch = [&]<int kGroup>() -> absl::Status {
      const dim3 grid(chunks, CeilDiv(plan.batch, kQueryBatch));
      QueryPartialKernel<T, kGroup><<<grid, kQueryThreads, 0, stream>>>(
          static_cast<const T*>(q_pre), q_row_stride, plan.batch, cache.head_dim, cache.width(),
          cache.basis, cache.basis_stride, policy.score_dims, plan.score_stride, partial);
      SALS_KERNELS_RETURN_IF_ERROR(LastLaunchStatus("QueryPartialKernel"));
      const int64_t n = static_cast<int64_t>(plan.batch) * plan.score_stride;
      QueryReduceKernel<<<CeilDiv(n, 256), 256, 0, stream>>>(partial, chunks, plan.batch,
                                                             plan.score_stride, q_latent);
      return LastLaunchStatus("QueryReduceKernel");
    };
    switch (group) {
      case 1:
        return launch.template operator()<1>();
      case 2:
        return launch.template operator()<2>();
      case 4:
        return launch.template operator()<4>();
      case 8:
        return launch.template operator()<8>();
    }
    return absl::InvalidArgumentError(
        absl::StrCat("SalsLatentQuery: unsupported GQA group ", group, " (have 1, 2, 4, 8)"));
  });
}

absl::Status SalsLatentScores(const SalsKvCache& cache, const SalsSelectionPolicy& policy,
                              const SalsDecodePlan& plan, const float* q_latent, float* scores,
                              cudaStream_t stream) {
  SALS_KERNELS_RETURN_IF_ERROR(ValidateStage("SalsLatentScores", cache, policy, plan));
  if (plan.batch == 0 || plan.max_middle == 0) return absl::OkStatus();
  const int vectors = plan.score_stride / 8;
  const dim3 grid(CeilDiv(plan.max_middle, plan.score_block_tokens), plan.batch);
  auto launch = [&]<int kLanes>() {
    ScoreKernel<kLanes><<<grid, kScoreThreads, 0, stream>>>(
        cache, policy, plan.max_cached, FastDiv(cache.block_size), plan.score_block_tokens,
        q_latent, plan.score_stride, plan.max_middle, scores);
    return LastLaunchStatus("ScoreKernel");
  };
  if (vectors >= 32) return launch.template operator()<32>();
  if (vectors > 8) return launch.template operator()<16>();
  if (vectors > 4) return launch.template operator()<8>();
  if (vectors > 2) return launch.template operator()<4>();
  if (vectors > 1) return launch.template operator()<2>();
  return launch.template operator()<1>();
}

int SalsTopKClusterFor(int max_middle) {
  return static_cast<int>(
      std::clamp<int64_t>(CeilDiv(max_middle, kTopKKeysPerBlock), 1, kTopKMaxCluster));
}

absl::Status SalsTopK(const SalsKvCache& cache, const SalsSelectionPolicy& policy,
                      const SalsDecodePlan& plan, const float* scores, int32_t* selected,
                      cudaStream_t stream) {
  SALS_KERNELS_RETURN_IF_ERROR(ValidateStage("SalsTopK", cache, policy, plan));
  if (plan.batch == 0) return absl::OkStatus();
  const int parts = plan.topk_cluster;
  if (parts < 1 || parts > kTopKMaxCluster) {
    return absl::InvalidArgumentError(
        absl::StrCat("SalsTopK: topk_cluster ", parts, " outside [1, ", kTopKMaxCluster, "]"));
  }
  const int per_part = static_cast<int>(CeilDiv(plan.max_middle, parts));
  const bool keys_in_smem = per_part <= kTopKSmemKeys;
  const int smem_bytes = keys_in_smem ? per_part * static_cast<int>(sizeof(uint32_t)) : 0;
  SALS_CUDA_RETURN_IF_ERROR(cudaFuncSetAttribute(
      TopKKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kTopKSmemKeys * sizeof(uint32_t)));
  if (parts == 1) {
    TopKKernel<<<plan.batch, kTopKThreads, smem_bytes, stream>>>(cache, policy, plan.max_cached,
                                                                 scores, plan.max_middle, selected,
                                                                 plan.max_topk, keys_in_smem);
    return LastLaunchStatus("TopKKernel");
  }
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(plan.batch * parts);
  config.blockDim = dim3(kTopKThreads);
  config.dynamicSmemBytes = smem_bytes;
  config.stream = stream;
  cudaLaunchAttribute cluster;
  cluster.id = cudaLaunchAttributeClusterDimension;
  cluster.val.clusterDim.x = parts;
  cluster.val.clusterDim.y = 1;
  cluster.val.clusterDim.z = 1;
  config.attrs = &cluster;
  config.numAttrs = 1;
  SALS_CUDA_RETURN_IF_ERROR(cudaLaunchKernelEx(&config, TopKKernel, cache, policy, plan.max_cached,
                                               scores, plan.max_middle, selected, plan.max_topk,
                                               keys_in_smem));
  return LastLaunchStatus("TopKKernel");
}

}  // namespace sals::kernels
