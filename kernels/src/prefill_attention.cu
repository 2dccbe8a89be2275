// Paged causal prefill attention on tensor cores (mma.sync m16n8k16, f16 in, f32 accumulate),
// FlashAttention-2 style. A thread block owns 64 query rows of one KV head, a row being a
// (new token, query head of the group) pair, so the GQA group shares every K/V tile. Each of the
// 4 warps computes S = Q K^T for its 16 rows against a 64-token K tile staged in shared memory,
// applies the causal mask and an online softmax, and accumulates O += P V with P kept in
// registers as f16. Q is scaled by scale * log2(e) and rounded to f16 (bf16 queries too).

#include "attention_common.cuh"

namespace sals::kernels {
namespace {

using internal::CeilDiv;
using internal::CpAsync;
using internal::CpAsyncWaitAll;
using internal::FastDiv;
using internal::FromFloat;
using internal::LastLaunchStatus;
using internal::LdMatrixX4;
using internal::MmaF16;
using internal::PackHalf2;
using internal::ToFloat;

constexpr int kPrefillWarps = 4;
constexpr int kPrefillThreads = kPrefillWarps * 32;
constexpr int kBlockRows = kPrefillWarps * 16;
constexpr int kKvTile = 64;

template <typename T, int kHeadDim, int kGroup>
__global__ void __launch_bounds__(kPrefillThreads)
    PrefillKernel(PagedKvCache cache, const T* __restrict__ q, int64_t q_row_stride,
                  const int32_t* __restrict__ q_starts, float scale_log2, FastDiv block_div,
                  T* __restrict__ out) {
  constexpr int kDimPad = (kHeadDim + 15) / 16 * 16;  // the MMA's k and n steps are 16
  // +8 halves per row: consecutive rows start 16 bytes apart modulo 128, so the 8 row addresses
  // of an ldmatrix hit distinct banks.
  constexpr int kStride = kDimPad + 8;
  constexpr int kVec = kHeadDim % 8 == 0 ? 8 : kHeadDim % 4 == 0 ? 4 : 2;  // halves per copy
  constexpr int kRowVecs = kDimPad / kVec;
  static_assert(kHeadDim % 2 == 0, "pairs of head dims are packed into one register");

  __shared__ alignas(16) __half sk[kKvTile * kStride];
  __shared__ alignas(16) __half sv[kKvTile * kStride];

  const int b = blockIdx.z;
  const int kv_head = blockIdx.y;
  const int q_begin = q_starts[b];
  const int q_len = q_starts[b + 1] - q_begin;
  const int rows = q_len * kGroup;
  const int row0 = blockIdx.x * kBlockRows;
  if (row0 >= rows) return;
  const int kv_len = cache.kv_lens[b];
  const int first_pos = kv_len - q_len;  // position of the chunk's first token
  const int num_heads = cache.num_kv_heads * kGroup;

  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int group_id = lane / 4;  // fragment row
  const int quad = lane % 4;      // fragment column pair
  // This thread's two fragment rows (lo: c[0..1], hi: c[2..3]) and their positions; rows past
  // the chunk get position -1 and so attend to nothing.
  int qrow[2];
  int pos[2];
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    qrow[i] = row0 + warp * 16 + group_id + 8 * i;
    pos[i] = qrow[i] < rows ? first_pos + qrow[i] / kGroup : -1;
  }

  uint32_t qf[kDimPad / 16][4];
#pragma unroll
  for (int kk = 0; kk < kDimPad / 16; ++kk) {
#pragma unroll
    for (int reg = 0; reg < 4; ++reg) {
      const int r = qrow[reg & 1];
      const int col = kk * 16 + quad * 2 + (reg >= 2 ? 8 : 0);
      float x0 = 0.0f;
      float x1 = 0.0f;
      if (r < rows && col < kHeadDim) {
        const T* p = q + static_cast<int64_t>(q_begin + r / kGroup) * q_row_stride +
                     static_cast<int64_t>(kv_head * kGroup + r % kGroup) * kHeadDim + col;
        x0 = ToFloat(p[0]) * scale_log2;
        x1 = ToFloat(p[1]) * scale_log2;
      }
      qf[kk][reg] = PackHalf2(x0, x1);
    }
  }

  float o[kDimPad / 8][4] = {};
  float m[2] = {-INFINITY, -INFINITY};
  float l[2] = {0.0f, 0.0f};

  const int last_row = min(row0 + kBlockRows, rows) - 1;
  const int kv_end = first_pos + last_row / kGroup + 1;  // keys any row of the block sees
  const int32_t* table = cache.block_tables + b * cache.block_table_stride;
  const int64_t kv_row = static_cast<int64_t>(cache.num_kv_heads) * kHeadDim;
  const __half* k_head = cache.k + static_cast<int64_t>(kv_head) * kHeadDim;
  const __half* v_head = cache.v + static_cast<int64_t>(kv_head) * kHeadDim;
  const int block_size = cache.block_size;

  for (int kt = 0; kt < kv_end; kt += kKvTile) {
    __syncthreads();  // the previous tile is no longer read
    for (int i = threadIdx.x; i < kKvTile * kRowVecs; i += kPrefillThreads) {
      const int r = i / kRowVecs;
      const int c = (i % kRowVecs) * kVec;
      const int tok = kt + r;
      // Rows past kv_end and the padding dims are zero-filled: masked scores then meet zero V.
      const bool valid = tok < kv_end && c < kHeadDim;
      int64_t offset = 0;
      if (valid) {
        const int blk = block_div.Div(tok);
        offset =
            (static_cast<int64_t>(table[blk]) * block_size + (tok - blk * block_size)) * kv_row + c;
      }
      CpAsync<kVec * 2>(sk + r * kStride + c, k_head + offset, valid);
      CpAsync<kVec * 2>(sv + r * kStride + c, v_head + offset, valid);
    }
    CpAsyncWaitAll();
    __syncthreads();

    float s[kKvTile / 8][4] = {};
    const int mi = lane / 8;  // which 8x8 matrix of an ldmatrix.x4 this lane addresses
#pragma unroll
    for (int j = 0; j < kKvTile / 16; ++j) {
#pragma unroll
      for (int kk = 0; kk < kDimPad / 16; ++kk) {
        uint32_t kb[4];
        LdMatrixX4<false>(
            kb, sk + (j * 16 + (mi / 2) * 8 + lane % 8) * kStride + kk * 16 + (mi % 2) * 8);
        MmaF16(s[2 * j], qf[kk], kb[0], kb[1]);
        MmaF16(s[2 * j + 1], qf[kk], kb[2], kb[3]);
      }
    }

    float mx[2] = {m[0], m[1]};
#pragma unroll
    for (int nt = 0; nt < kKvTile / 8; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int tok = kt + nt * 8 + quad * 2 + (e & 1);
        if (tok > pos[e >> 1]) s[nt][e] = -INFINITY;
        mx[e >> 1] = fmaxf(mx[e >> 1], s[nt][e]);
      }
    }
    float ref[2];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 1));
      mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 2));
      ref[i] = mx[i] == -INFINITY ? 0.0f : mx[i];
      const float rescale = exp2f(m[i] - ref[i]);
      m[i] = mx[i];
      l[i] *= rescale;
#pragma unroll
      for (int dt = 0; dt < kDimPad / 8; ++dt) {
        o[dt][2 * i] *= rescale;
        o[dt][2 * i + 1] *= rescale;
      }
    }
#pragma unroll
    for (int nt = 0; nt < kKvTile / 8; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        s[nt][e] = exp2f(s[nt][e] - ref[e >> 1]);
        l[e >> 1] += s[nt][e];
      }
    }

    // The S accumulator layout of two n-tiles is the A fragment layout of one k-step.
#pragma unroll
    for (int j = 0; j < kKvTile / 16; ++j) {
      const uint32_t pa[4] = {
          PackHalf2(s[2 * j][0], s[2 * j][1]), PackHalf2(s[2 * j][2], s[2 * j][3]),
          PackHalf2(s[2 * j + 1][0], s[2 * j + 1][1]), PackHalf2(s[2 * j + 1][2], s[2 * j + 1][3])};
#pragma unroll
      for (int dp = 0; dp < kDimPad / 16; ++dp) {
        uint32_t vb[4];
        LdMatrixX4<true>(
            vb, sv + (j * 16 + (mi % 2) * 8 + lane % 8) * kStride + dp * 16 + (mi / 2) * 8);
        MmaF16(o[2 * dp], pa, vb[0], vb[1]);
        MmaF16(o[2 * dp + 1], pa, vb[2], vb[3]);
      }
    }
  }

#pragma unroll
  for (int i = 0; i < 2; ++i) {
    l[i] += __shfl_xor_sync(0xffffffffu, l[i], 1);
    l[i] += __shfl_xor_sync(0xffffffffu, l[i], 2);
    if (qrow[i] >= rows) continue;
    const float inv = l[i] > 0.0f ? 1.0f / l[i] : 0.0f;
    T* op = out + static_cast<int64_t>(q_begin + qrow[i] / kGroup) * num_heads * kHeadDim +
            static_cast<int64_t>(kv_head * kGroup + qrow[i] % kGroup) * kHeadDim;
#pragma unroll
    for (int dt = 0; dt < kDimPad / 8; ++dt) {
      const int d = dt * 8 + quad * 2;
      if (d < kHeadDim) {
        op[d] = FromFloat<T>(o[dt][2 * i] * inv);
        op[d + 1] = FromFloat<T>(o[dt][2 * i + 1] * inv);
      }
    }
  }
}

}  // namespace

absl::Status PrefillAttention(DType dtype, const PagedKvCache& cache, int batch, int num_heads,
                              const void* q, int64_t q_row_stride, const int32_t* q_starts,
                              int max_q_len, float scale, void* out, cudaStream_t stream) {
  SALS_KERNELS_RETURN_IF_ERROR(
      internal::ValidateAttention("PrefillAttention", cache, batch, num_heads));
  if (q_starts == nullptr || max_q_len < 0 ||
      q_row_stride < static_cast<int64_t>(num_heads) * cache.head_dim) {
    return absl::InvalidArgumentError(absl::StrCat(
        "PrefillAttention: bad arguments max_q_len=", max_q_len, " q_row_stride=", q_row_stride));
  }
  if (batch == 0 || max_q_len == 0) return absl::OkStatus();
  const int group = num_heads / cache.num_kv_heads;
  return internal::DispatchAttention(
      "PrefillAttention", dtype, cache.head_dim, group,
      [&]<typename T, int kHeadDim, int kGroup>() -> absl::Status {
        const dim3 grid(CeilDiv(static_cast<int64_t>(max_q_len) * kGroup, kBlockRows),
                        cache.num_kv_heads, batch);
        PrefillKernel<T, kHeadDim, kGroup><<<grid, kPrefillThreads, 0, stream>>>(
            cache, static_cast<const T*>(q), q_row_stride, q_starts, scale * internal::kLog2e,
            FastDiv(cache.block_size), static_cast<T*>(out));
        return LastLaunchStatus("PrefillKernel");
      });
}

}  // namespace sals::kernels
