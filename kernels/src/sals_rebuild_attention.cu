// Stage 4 of the SALS decode step on the GEMM path (sals_decode.h, SalsKeyRebuild::kGemm).
//
// Why a GEMM: rebuilding one key costs 2 * rank * D flops, on an H200 about the time reading a
// dense fp16 key takes (~200 flops per byte of bandwidth), so the rebuild has to run near the
// tensor cores' peak or SALS loses its edge. cuBLAS gets there on [rank x D]^T x [rank x rows];
// the fused kernel (sals_attention.cu) reaches a fifth of it. The keys of one chunk of sequences
// (fp16, at most kChunkBytes) stay in the L2 for the attention kernel that follows: one block per
// (tile of attended rows, sequence, group of KV heads), one warp per row at a time, each lane
// holding head_dim / 32 dims of a key and of a value; RoPE pairs dims i and i + head_dim / 2,
// which sit in lanes l and l ^ 16. Values are dequantized and keys rotated on the fly.

#include <cublas_v2.h>

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "attention_common.cuh"
#include "sals_internal.h"
#include "sals_rows.cuh"

namespace sals::kernels::internal {
namespace {

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
constexpr int kMaxTile = 64;
// Rows a warp works on at once. 4 (independent chains to hide latency, fewer heads per block to
// fit the registers) measured slower on the H200 than 1 row with the next row's loads in flight.
constexpr int kRows = 1;
constexpr int kGatherThreads = 256;
constexpr int64_t kChunkBytes = int64_t{32} << 20;  // rebuilt keys per round (L2: 50 MB)

struct GatherParams {
  SalsKvCache cache;
  SalsSelectionPolicy policy;
  const int32_t* selected;
  int max_topk;
  int max_cached;
  int first_seq;
  int sequences;
  __half* gathered;  // [sequences x max_topk x policy.rank]
};

// One thread per 16 bytes of a gathered row: row (s, e) is the latent (first policy.rank dims) of
// selected token e of sequence first_seq + s, zeros past the sequence's top-k.
__global__ void __launch_bounds__(kGatherThreads)
    GatherLatentsKernel(const __grid_constant__ GatherParams p) {
  const int chunks = p.policy.rank / 8;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * kGatherThreads + threadIdx.x;
  if (idx >= static_cast<int64_t>(p.sequences) * p.max_topk * chunks) return;
  const int ch = static_cast<int>(idx % chunks);
  const int64_t row = idx / chunks;
  const int e = static_cast<int>(row % p.max_topk);
  const int b = p.first_seq + static_cast<int>(row / p.max_topk);
  const SalsKvCache& c = p.cache;
  const int cached = min(c.kv_lens[b], p.max_cached);
  uint4 v = make_uint4(0, 0, 0, 0);
  if (e < SalsPlanSelection(p.policy, cached).topk) {
    const int pos = p.selected[static_cast<int64_t>(b) * p.max_topk + e];
    if (pos >= 0 && pos < cached) {
      const int32_t block = c.block_tables[b * c.block_table_stride + pos / c.block_size];
      const int64_t slot = static_cast<int64_t>(block) * c.block_size + pos % c.block_size;
      v = *reinterpret_cast<const uint4*>(c.latent + slot * c.rank + ch * 8);
    }
  }
  *reinterpret_cast<uint4*>(p.gathered + row * p.policy.rank + ch * 8) = v;
}

struct AttendParams {
  SalsKvCache cache;
  SalsSelectionPolicy policy;
  const uint16_t* q;  // f16 or bf16 bits
  int64_t q_row_stride;
  const uint16_t* k_new;
  const uint16_t* v_new;
  int64_t kv_row_stride;
  const float* inv_freq;
  float scale_log2;
  const int32_t* selected;
  int max_topk;
  const __half* rebuilt;  // [chunk sequences x max_topk x D], pre-RoPE
  int first_seq;
  float* partial_o;
  float* partial_lse;
  int max_cached;
  int max_tiles;
  int num_heads;
  int tile_tokens;
  bool bf16;
};

// Where the packed codes of value dims [dim0, dim0 + kDims) sit in a token's code row (value_bits
// 2 or 4, low bits first): kDims * bits is 4, 8 or 16 bits, aligned to itself except 4 (a
// nibble). Per lane and head, computed once.
struct CodeSpot {
  int32_t byte = 0;
  int32_t shift = 0;
  int32_t group = 0;  // (scale, zero) pair
};

template <int kDims>
__device__ __forceinline__ CodeSpot FindCodes(const SalsKvCache& c, int64_t dim0) {
  const int64_t bit0 = dim0 * c.value_bits;
  return {static_cast<int32_t>(bit0 / 8), static_cast<int32_t>(bit0 % 8),
          static_cast<int32_t>(dim0 / c.value_group_size)};
}

template <int kDims>
__device__ __forceinline__ uint32_t LoadCodes(const uint8_t* row, int bits, CodeSpot spot) {
  if (kDims * bits == 16) return *reinterpret_cast<const uint16_t*>(row + spot.byte);
  return static_cast<uint32_t>(row[spot.byte]) >> spot.shift;
}

// code * scale + zero, rounded as the reference does (no fused multiply-add).
template <int kDims>
__device__ __forceinline__ void DecodeValues(uint32_t word, __half2 scale_zero, int bits,
                                             float (&v)[kDims]) {
  const float scale = __low2float(scale_zero);
  const float zero = __high2float(scale_zero);
  const uint32_t mask = (1u << bits) - 1u;
#pragma unroll
  for (int d = 0; d < kDims; ++d) {
    v[d] = __fadd_rn(__fmul_rn(static_cast<float>((word >> (d * bits)) & mask), scale), zero);
  }
}

// The rare latent row outside the selection (a recent token restored from the prefix cache,
// which has no exact copy): rebuilt here from U and its latent, in fp32.
template <int kDims>
__device__ void RebuildOne(const SalsKvCache& c, int rank, int64_t slot, int64_t dim0,
                           float (&k)[kDims]) {
  const __half* latent = c.latent + slot * c.rank;
#pragma unroll
  for (int d = 0; d < kDims; ++d) {
    const __half* u = c.basis + (dim0 + d) * c.basis_stride;
    float sum = 0.0f;
    for (int j = 0; j < rank; ++j) sum = fmaf(__half2float(u[j]), __half2float(latent[j]), sum);
    k[d] = sum;
  }
}

// sin and cos of a RoPE angle (fp32 angle as the reference computes it): reduced to [-pi, pi]
// with 2 pi in two parts, then the hardware approximations (|error| < 4e-7 there), a fraction
// of sincosf's cost.
__device__ __forceinline__ void RopeSinCos(float angle, float* sin_out, float* cos_out) {
  const float turns = rintf(angle * 0.159154943091895336f);
  float r = fmaf(-turns, 6.28318548202514648f, angle);  // 2 pi rounded up to a float
  r = fmaf(turns, 1.74845553146951715e-7f, r);          // minus the excess
  __sincosf(r, sin_out, cos_out);
}

// Sums each of kN per-lane partial values over the warp (kN a power of two <= 32) and returns
// them all to every lane: a reduce-scatter (the lanes of each 32 / kN group end up owning one
// sum) then broadcasts, log2(kN) + 5 + kN shuffles instead of 5 kN for kN separate butterflies.
template <int kN>
__device__ __forceinline__ void WarpAllSums(float (&x)[kN], int lane) {
  constexpr int kSteps =
      kN == 1 ? 0 : (kN == 2 ? 1 : (kN == 4 ? 2 : (kN == 8 ? 3 : (kN == 16 ? 4 : 5))));
  static_assert((1 << kSteps) == kN && kN <= 32);
  float v[kN];
#pragma unroll
  for (int j = 0; j < kN; ++j) v[j] = x[j];
  int off = 16;
#pragma unroll
  for (int half = kN / 2; half >= 1; half /= 2, off /= 2) {
    const bool up = (lane & off) != 0;
#pragma unroll
    for (int j = 0; j < half; ++j) {
      const float keep = up ? v[j + half] : v[j];
      const float send = up ? v[j] : v[j + half];
      v[j] = keep + __shfl_xor_sync(0xffffffffu, send, off);
    }
  }
  if constexpr (kSteps < 5) {
#pragma unroll
    for (; off >= 1; off /= 2) v[0] += __shfl_xor_sync(0xffffffffu, v[0], off);
  }
  if constexpr (kN == 1) {
    x[0] = v[0];
  } else {
#pragma unroll
    for (int j = 0; j < kN; ++j) x[j] = __shfl_sync(0xffffffffu, v[0], j << (5 - kSteps));
  }
}

template <int kHeadDim, int kGroup, int kHeads>
__global__ void __launch_bounds__(kThreads)
    RebuiltAttentionKernel(const __grid_constant__ AttendParams p) {
  constexpr int kDims = kHeadDim / 32;  // per lane
  constexpr int kQ = kHeads * kGroup;   // query heads of the block
  __shared__ SalsRow rows[kMaxTile];
  __shared__ float2 red_ml[kWarps][kQ];
  __shared__ float red_o[kWarps][kQ][kHeadDim];

  const SalsKvCache& c = p.cache;
  const int tile = blockIdx.x;
  const int b = p.first_seq + blockIdx.y;
  const int kvh0 = blockIdx.z * kHeads;
  const int cached = min(c.kv_lens[b], p.max_cached);
  const SalsSelection sel = SalsPlanSelection(p.policy, cached);
  const int n_sink = min(sel.sink_end, cached);
  const int n_recent = max(0, cached - sel.recent_begin);
  const int attended = sel.topk + n_sink + n_recent + 1;
  const int row0 = tile * p.tile_tokens;
  if (row0 >= attended) return;
  const int rows_here = min(p.tile_tokens, attended - row0);
  const int tid = threadIdx.x;
  const int warp = tid / 32;
  const int lane = tid % 32;
  const int width = c.width();
  if (tid < rows_here) {
    rows[tid] =
        ResolveSalsRow(c, sel, b, cached, row0 + tid, n_sink, n_recent, p.selected, p.max_topk);
  }

  // This lane's dims of the block's (post-RoPE) queries, in log2 units of the softmax.
  float q[kQ][kDims];
#pragma unroll
  for (int i = 0; i < kQ; ++i) {
#pragma unroll
    for (int d = 0; d < kDims; ++d) {
      q[i][d] = SalsBits16ToFloat(
                    p.q[b * p.q_row_stride + static_cast<int64_t>(kvh0 * kGroup + i) * kHeadDim +
                        lane * kDims + d],
                    p.bf16) *
                p.scale_log2;
    }
  }
  float m[kQ];
  float l[kQ];
  float o[kQ][kDims];
#pragma unroll
  for (int i = 0; i < kQ; ++i) {
    m[i] = -INFINITY;
    l[i] = 0.0f;
#pragma unroll
    for (int d = 0; d < kDims; ++d) o[i][d] = 0.0f;
  }
  __syncthreads();

  const bool upper = lane >= 16;  // holds dims i + head_dim / 2 of the RoPE pairs
  const int64_t lane_dim0 = static_cast<int64_t>(kvh0) * kHeadDim + lane * kDims;
  CodeSpot spots[kHeads];
#pragma unroll
  for (int h = 0; h < kHeads; ++h) spots[h] = FindCodes<kDims>(c, lane_dim0 + h * kHeadDim);
  // A row's loads, raw: keys (and 16-bit values) as fp16/bf16 pairs, or value codes with their
  // (scale, zero) pair. Two rows are in flight per warp: the next row's loads are issued before
  // the current one is used.
  struct RowLoads {
    uint32_t k[kHeads][kDims / 2];
    uint32_t v[kHeads][kDims / 2];
    __half2 scale_zero[kHeads];
  };
  auto load_pairs = [](const void* src, uint32_t(&out)[kDims / 2]) {
    if constexpr (kDims == 4) {
      const uint2 raw = *reinterpret_cast<const uint2*>(src);
      out[0] = raw.x;
      out[1] = raw.y;
    } else {
      out[0] = *reinterpret_cast<const uint32_t*>(src);
    }
  };
  const bool quantized = c.value_bits != 16;
  auto issue = [&](int r, RowLoads& in) {
    const SalsRow row = rows[r];
    const int e = row0 + r;
    if (row.kind == kRowLatent) {
      if (e < sel.topk) {
        const __half* src =
            p.rebuilt + (static_cast<int64_t>(blockIdx.y) * p.max_topk + e) * width + lane_dim0;
#pragma unroll
        for (int h = 0; h < kHeads; ++h) load_pairs(src + h * kHeadDim, in.k[h]);
      }
      const uint8_t* code_row = c.value_codes + row.src * c.code_bytes();
      if (quantized) {
        const __half2* sz = c.value_scale_zero + row.src * c.groups();
#pragma unroll
        for (int h = 0; h < kHeads; ++h) {
          in.v[h][0] = LoadCodes<kDims>(code_row, c.value_bits, spots[h]);
          in.scale_zero[h] = sz[spots[h].group];
        }
      } else {
        const __half* src = reinterpret_cast<const __half*>(code_row) + lane_dim0;
#pragma unroll
        for (int h = 0; h < kHeads; ++h) load_pairs(src + h * kHeadDim, in.v[h]);
      }
    } else if (row.kind == kRowExact) {
      const __half* ks = c.exact_k + row.src * width + lane_dim0;
      const __half* vs = c.exact_v + row.src * width + lane_dim0;
#pragma unroll
      for (int h = 0; h < kHeads; ++h) {
        load_pairs(ks + h * kHeadDim, in.k[h]);
        load_pairs(vs + h * kHeadDim, in.v[h]);
      }
    }
  };
  auto to_floats = [](const uint32_t(&pairs)[kDims / 2], bool bf16, float(&out)[kDims]) {
#pragma unroll
    for (int j = 0; j < kDims / 2; ++j) {
      const float2 f = bf16
                           ? __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&pairs[j]))
                           : __half22float2(*reinterpret_cast<const __half2*>(&pairs[j]));
      out[2 * j] = f.x;
      out[2 * j + 1] = f.y;
    }
  };
  // Row r's keys (rotated) and values as floats.
  auto row_values = [&](int r, const RowLoads& in, float(&k)[kHeads][kDims],
                        float(&v)[kHeads][kDims]) {
    const SalsRow row = rows[r];  // warp-uniform: every branch below is too
    const int e = row0 + r;
    if (row.kind == kRowLatent) {
      if (e < sel.topk) {
#pragma unroll
        for (int h = 0; h < kHeads; ++h) to_floats(in.k[h], false, k[h]);
      } else {
#pragma unroll
        for (int h = 0; h < kHeads; ++h) {
          RebuildOne<kDims>(c, p.policy.rank, row.src, lane_dim0 + h * kHeadDim, k[h]);
        }
      }
      float cs[kDims];
      float sn[kDims];
#pragma unroll
      for (int d = 0; d < kDims; ++d) {
        RopeSinCos(static_cast<float>(row.pos) * p.inv_freq[(lane % 16) * kDims + d], &sn[d],
                   &cs[d]);
      }
#pragma unroll
      for (int h = 0; h < kHeads; ++h) {
#pragma unroll
        for (int d = 0; d < kDims; ++d) {
          const float partner = __shfl_xor_sync(0xffffffffu, k[h][d], 16);
          k[h][d] = upper ? k[h][d] * cs[d] + partner * sn[d] : k[h][d] * cs[d] - partner * sn[d];
        }
        if (quantized) {
          DecodeValues<kDims>(in.v[h][0], in.scale_zero[h], c.value_bits, v[h]);
        } else {
          to_floats(in.v[h], false, v[h]);
        }
      }
    } else if (row.kind == kRowExact) {
#pragma unroll
      for (int h = 0; h < kHeads; ++h) {
        to_floats(in.k[h], false, k[h]);
        to_floats(in.v[h], false, v[h]);
      }
    } else {  // the new token
      const int64_t at = b * p.kv_row_stride + lane_dim0;
#pragma unroll
      for (int h = 0; h < kHeads; ++h) {
#pragma unroll
        for (int d = 0; d < kDims; ++d) {
          k[h][d] = SalsBits16ToFloat(p.k_new[at + h * kHeadDim + d], p.bf16);
          v[h][d] = SalsBits16ToFloat(p.v_new[at + h * kHeadDim + d], p.bf16);
        }
      }
    }
  };
  // Rows [r0, r0 + kRows): scores of every (row, query head) reduced together, then the online
  // softmax row by row.
  auto attend = [&](int r0, const RowLoads(&in)[kRows]) {
    float k[kRows][kHeads][kDims];
    float v[kRows][kHeads][kDims];
    float scores[kRows * kQ];
#pragma unroll
    for (int j = 0; j < kRows; ++j) {
      const bool valid = r0 + j < rows_here && rows[r0 + j].kind != kRowInvalid;
      if (valid) {
        row_values(r0 + j, in[j], k[j], v[j]);
      } else {
#pragma unroll
        for (int h = 0; h < kHeads; ++h) {
#pragma unroll
          for (int d = 0; d < kDims; ++d) k[j][h][d] = v[j][h][d] = 0.0f;
        }
      }
#pragma unroll
      for (int h = 0; h < kHeads; ++h) {
#pragma unroll
        for (int g = 0; g < kGroup; ++g) {
          float dot = 0.0f;
#pragma unroll
          for (int d = 0; d < kDims; ++d) dot = fmaf(q[h * kGroup + g][d], k[j][h][d], dot);
          scores[j * kQ + h * kGroup + g] = dot;
        }
      }
    }
    WarpAllSums<kRows * kQ>(scores, lane);
#pragma unroll
    for (int j = 0; j < kRows; ++j) {
      if (r0 + j >= rows_here || rows[r0 + j].kind == kRowInvalid) continue;
#pragma unroll
      for (int i = 0; i < kQ; ++i) {
        const float s = scores[j * kQ + i];
        const float mx = fmaxf(m[i], s);
        const float correction = exp2f(m[i] - mx);
        const float weight = exp2f(s - mx);
        l[i] = fmaf(l[i], correction, weight);
#pragma unroll
        for (int d = 0; d < kDims; ++d) {
          o[i][d] = fmaf(o[i][d], correction, weight * v[j][i / kGroup][d]);
        }
        m[i] = mx;
      }
    }
  };
  // Each warp takes groups of kRows consecutive rows; the next group's loads are in flight while
  // the current one is attended.
  RowLoads current[kRows] = {};
  RowLoads next[kRows] = {};
  auto issue_group = [&](int r0, RowLoads(&in)[kRows]) {
#pragma unroll
    for (int j = 0; j < kRows; ++j) {
      if (r0 + j < rows_here) issue(r0 + j, in[j]);
    }
  };
  constexpr int kStride = kWarps * kRows;
  if (warp * kRows < rows_here) issue_group(warp * kRows, current);
  for (int r0 = warp * kRows; r0 < rows_here; r0 += kStride) {
    if (r0 + kStride < rows_here) issue_group(r0 + kStride, next);
    attend(r0, current);
#pragma unroll
    for (int j = 0; j < kRows; ++j) current[j] = next[j];
  }

  // Merge the warps: each query head's normalized output and log2-sum-exp for CombineKernel.
#pragma unroll
  for (int i = 0; i < kQ; ++i) {
    if (lane == 0) red_ml[warp][i] = make_float2(m[i], l[i]);
#pragma unroll
    for (int d = 0; d < kDims; ++d) red_o[warp][i][lane * kDims + d] = o[i][d];
  }
  __syncthreads();
  for (int idx = tid; idx < kQ * kHeadDim; idx += kThreads) {
    const int i = idx / kHeadDim;
    const int d = idx % kHeadDim;
    float mx = -INFINITY;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) mx = fmaxf(mx, red_ml[w][i].x);
    float sum = 0.0f;
    float value = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) {
      const float2 ml = red_ml[w][i];
      const float weight = ml.x == -INFINITY ? 0.0f : exp2f(ml.x - mx);
      sum = fmaf(ml.y, weight, sum);
      value = fmaf(red_o[w][i][d], weight, value);
    }
    const int64_t part =
        (static_cast<int64_t>(b) * p.max_tiles + tile) * p.num_heads + kvh0 * kGroup + i;
    const bool empty = !(sum > 0.0f);
    p.partial_o[part * kHeadDim + d] = empty ? 0.0f : value / sum;
    if (d == 0) p.partial_lse[part] = empty ? -INFINITY : mx + log2f(sum);
  }
}

// Calls f.template operator()<kHeadDim, kGroup, kHeads>() for the shapes ValidateSalsDecode and
// SalsGemmHeadsPerBlock allow.
template <typename F>
absl::Status DispatchRebuilt(int head_dim, int group, int heads, F&& f) {
  auto with_group = [&]<int kHeadDim>() -> absl::Status {
    switch (group) {
      case 1:
        switch (heads) {
          case 8:
            return f.template operator()<kHeadDim, 1, 8>();
          case 4:
            return f.template operator()<kHeadDim, 1, 4>();
          case 2:
            return f.template operator()<kHeadDim, 1, 2>();
        }
        return f.template operator()<kHeadDim, 1, 1>();
      case 2:
        switch (heads) {
          case 4:
            return f.template operator()<kHeadDim, 2, 4>();
          case 2:
            return f.template operator()<kHeadDim, 2, 2>();
        }
        return f.template operator()<kHeadDim, 2, 1>();
      case 4:
        return heads == 2 ? f.template operator()<kHeadDim, 4, 2>()
                          : f.template operator()<kHeadDim, 4, 1>();
      default:
        return f.template operator()<kHeadDim, 8, 1>();
    }
  };
  return head_dim == 128 ? with_group.template operator()<128>()
                         : with_group.template operator()<64>();
}

}  // namespace

int SalsGemmHeadsPerBlock(int num_kv_heads, int group) {
  for (int heads = 8; heads > 1; heads /= 2) {
    if (heads * group * kRows <= 8 && num_kv_heads % heads == 0) return heads;
  }
  return 1;
}

int SalsGemmChunkSequences(const SalsKvCache& cache, int batch, int max_topk) {
  if (batch <= 1) return 1;
  const int64_t per_sequence = static_cast<int64_t>(std::max(1, max_topk)) * cache.width() * 2;
  const int64_t fit = std::clamp<int64_t>(kChunkBytes / per_sequence, 1, batch);
  const int64_t rounds = (batch + fit - 1) / fit;
  return static_cast<int>((batch + rounds - 1) / rounds);  // even rounds
}

absl::Status SalsGemmSparseAttention(DType dtype, const SalsKvCache& cache,
                                     const SalsSelectionPolicy& policy, const SalsDecodePlan& plan,
                                     const void* q, int64_t q_row_stride, const void* k_new,
                                     const void* v_new, int64_t kv_row_stride,
                                     const float* inv_freq, float scale, const int32_t* selected,
                                     void* workspace, void* out, cudaStream_t stream,
                                     cublasHandle_t blas) {
  if (blas == nullptr) {
    return absl::InvalidArgumentError(
        "SalsSparseAttention: a kGemm plan needs a cuBLAS handle (or plan with kFused)");
  }
  if (plan.chunk_sequences < 1 || plan.tile_tokens < 1 || plan.tile_tokens > kMaxTile ||
      plan.heads_per_block !=
          SalsGemmHeadsPerBlock(cache.num_kv_heads, plan.num_heads / cache.num_kv_heads) ||
      cache.rank % 8 != 0 || policy.rank % 8 != 0) {
    return absl::InvalidArgumentError("SalsSparseAttention: bad kGemm plan");
  }
  const SalsWorkspaceLayout ws = SalsDecodeWorkspace(cache, plan);
  uint8_t* base = static_cast<uint8_t*>(workspace);
  __half* gathered = reinterpret_cast<__half*>(base + ws.gathered);
  __half* rebuilt = reinterpret_cast<__half*>(base + ws.rebuilt);
  float* partial_o = reinterpret_cast<float*>(base + ws.partial_o);
  float* partial_lse = reinterpret_cast<float*>(base + ws.partial_lse);
  // cublasSetStream also resets the handle's workspace to the default pool: only when needed.
  cudaStream_t current = nullptr;
  if (cublasGetStream(blas, &current) != CUBLAS_STATUS_SUCCESS || current != stream) {
    if (const cublasStatus_t st = cublasSetStream(blas, stream); st != CUBLAS_STATUS_SUCCESS) {
      return absl::InternalError(absl::StrCat("cublasSetStream: ", cublasGetStatusString(st)));
    }
  }
  const int group = plan.num_heads / cache.num_kv_heads;
  const int width = cache.width();

  GatherParams g;
  g.cache = cache;
  g.policy = policy;
  g.selected = selected;
  g.max_topk = plan.max_topk;
  g.max_cached = plan.max_cached;
  g.gathered = gathered;
  AttendParams a;
  a.cache = cache;
  a.policy = policy;
  a.q = static_cast<const uint16_t*>(q);
  a.q_row_stride = q_row_stride;
  a.k_new = static_cast<const uint16_t*>(k_new);
  a.v_new = static_cast<const uint16_t*>(v_new);
  a.kv_row_stride = kv_row_stride;
  a.inv_freq = inv_freq;
  a.scale_log2 = scale * kLog2e;
  a.selected = selected;
  a.max_topk = plan.max_topk;
  a.rebuilt = rebuilt;
  a.partial_o = partial_o;
  a.partial_lse = partial_lse;
  a.max_cached = plan.max_cached;
  a.max_tiles = plan.max_tiles;
  a.num_heads = plan.num_heads;
  a.tile_tokens = plan.tile_tokens;
  a.bf16 = dtype == DType::kBF16;

  const float alpha = 1.0f;
  const float beta = 0.0f;
  for (int first = 0; first < plan.batch; first += plan.chunk_sequences) {
    const int n = std::min(plan.chunk_sequences, plan.batch - first);
    g.first_seq = first;
    g.sequences = n;
    const int64_t threads = static_cast<int64_t>(n) * plan.max_topk * (policy.rank / 8);
    GatherLatentsKernel<<<static_cast<unsigned>(CeilDiv(threads, kGatherThreads)), kGatherThreads,
                          0, stream>>>(g);
    SALS_KERNELS_RETURN_IF_ERROR(LastLaunchStatus("GatherLatentsKernel"));
    // rebuilt (column-major D x rows) = U[:, :rank] (the basis read as a column-major
    // basis_stride x D matrix, transposed) x gathered (column-major rank x rows).
    if (const cublasStatus_t st =
            cublasGemmEx(blas, CUBLAS_OP_T, CUBLAS_OP_N, width, n * plan.max_topk, policy.rank,
                         &alpha, cache.basis, CUDA_R_16F, static_cast<int>(cache.basis_stride),
                         gathered, CUDA_R_16F, policy.rank, &beta, rebuilt, CUDA_R_16F, width,
                         CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
        st != CUBLAS_STATUS_SUCCESS) {
      return absl::InternalError(
          absl::StrCat("SalsSparseAttention: key rebuild GEMM: ", cublasGetStatusString(st)));
    }
    a.first_seq = first;
    SALS_KERNELS_RETURN_IF_ERROR(DispatchRebuilt(
        cache.head_dim, group, plan.heads_per_block,
        [&]<int kHeadDim, int kGroup, int kHeads>() -> absl::Status {
          const dim3 grid(plan.max_tiles, n, cache.num_kv_heads / kHeads);
          RebuiltAttentionKernel<kHeadDim, kGroup, kHeads><<<grid, kThreads, 0, stream>>>(a);
          return LastLaunchStatus("RebuiltAttentionKernel");
        }));
  }
  return LaunchSalsCombine(dtype, cache, policy, plan, partial_o, partial_lse, out, stream);
}

}  // namespace sals::kernels::internal
