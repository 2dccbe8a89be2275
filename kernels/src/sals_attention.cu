// Stage 4 of the SALS decode step (sals_decode.h), its plan and workspace, and the whole step.
//
// One thread block owns a tile of 64 or 128 attended tokens of one sequence and a group of KV
// heads. The tile's latent keys stay in shared memory (128-byte swizzled rows, [tile x rank]) for
// all its heads; per head, U_h (head_dim x rank) streams through a 4-slot ring of 64-dim k-tiles
// and the warps rebuild K_h = latent U_h^T on tensor cores (wgmma m64nHk16 from shared memory on
// sm_90a builds, else mma.sync m16n8k16 with ldmatrix), 16 token rows per warp. RoPE, the scores
// of the group's query heads, the tile's softmax and P V (values dequantized from codes staged in
// shared memory) follow in registers and shared memory; each (tile, head) leaves a normalized
// partial output and its log-sum-exp, merged by a combine kernel.
//
// Cost (docs/SALS.md): the rebuild is 2 * tile * rank * head_dim flops per (tile, head) against
// head_dim * rank * 2 bytes of U read from the L2, so a 128-token tile does 128 flops per byte.
// Every block reads the same few MB of U, all in the same order unless plan.spread_u_reads.

#include <algorithm>
#include <limits>

#include "absl/strings/str_cat.h"
#include "attention_common.cuh"
#include "sals/kernels/sals_decode.h"
#include "sals_internal.h"
#include "sals_rows.cuh"

namespace sals::kernels {
namespace {

using internal::CeilDiv;
using internal::FromFloat;
using internal::kLog2e;
using internal::LastLaunchStatus;
using internal::LdMatrixX4;
using internal::MmaF16;
using internal::WarpMax;
using internal::WarpSum;

constexpr int kKTile = 64;  // latent dims per pipeline stage: one 128-byte shared-memory row
constexpr int kStages = 5;  // U ring: kAhead stages in flight, one computed, one wgmma pending
constexpr int kAhead = 3;
constexpr int kMaxRank = 1024;
constexpr int kQueryChunkRows = 64;  // SalsLatentQuery's rows of U per block (sals_select.cu)
constexpr int kCombineThreads = 128;
constexpr int64_t kLargeScoreWork = 96 * 1024;  // middle tokens of a batch (measured, H200)

constexpr int32_t kInvalid = internal::kRowInvalid;
constexpr int32_t kLatent = internal::kRowLatent;
constexpr int32_t kExact = internal::kRowExact;
constexpr int32_t kNew = internal::kRowNew;

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
__device__ int g_wgmma_compiled = 1;
#else
__device__ int g_wgmma_compiled = 0;
#endif

// Byte offset of 16-byte chunk `chunk` of row `row` in a tile of 128-byte rows with the 128-byte
// swizzle (chunk XOR row mod 8): ldmatrix reads 8 rows of one chunk without bank conflicts, and
// it is the layout wgmma's 128B-swizzle descriptors describe (tiles are 1024-byte aligned).
__device__ __forceinline__ uint32_t Swizzled(int row, int chunk) {
  return static_cast<uint32_t>(row * 128 + ((chunk ^ (row & 7)) << 4));
}

// 16 bytes global -> shared through the L2 only, zero-filled when !valid.
__device__ __forceinline__ void CpAsync16(uint32_t smem, const void* gmem, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem), "l"(gmem),
               "r"(valid ? 16 : 0));
}

__device__ __forceinline__ void CpAsync4(uint32_t smem, const void* gmem) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(smem), "l"(gmem));
}

__device__ __forceinline__ void CpAsyncCommit() {
  asm volatile("cp.async.commit_group;\n" ::: "memory");
}

template <int kPending>
__device__ __forceinline__ void CpAsyncWait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
}

// ---- wgmma (sm_90a): both operands in shared memory, K-major, 128-byte swizzle.

// Matrix descriptor: start address, leading offset 16 B (unused with this swizzle), stride 1024
// B between 8-row groups, 128-byte swizzle.
__device__ __forceinline__ uint64_t SmemDescriptor(uint32_t addr) {
  return static_cast<uint64_t>((addr & 0x3FFFF) >> 4) | (uint64_t{1} << 16) |
         (uint64_t{1024 >> 4} << 32) | (uint64_t{1} << 62);
}

// Orders this thread's shared-memory writes (cp.async included) before async-proxy reads.
__device__ __forceinline__ void FenceProxyAsync() {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}

__device__ __forceinline__ void WgmmaFence() {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}

__device__ __forceinline__ void WgmmaCommit() {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}

template <int kPending>
__device__ __forceinline__ void WgmmaWait() {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(kPending) : "memory");
#endif
}

// Keeps the compiler from moving accumulator reads or writes across a wgmma fence or wait.
template <int kBlocks>
__device__ __forceinline__ void FenceAccumulators(float (&d)[kBlocks][4]) {
#pragma unroll
  for (int j = 0; j < kBlocks; ++j) {
#pragma unroll
    for (int e = 0; e < 4; ++e) asm volatile("" : "+f"(d[j][e])::"memory");
  }
}

__device__ __forceinline__ void WgmmaM64N128(float (&d)[16][4], uint64_t a, uint64_t b) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile(
      "{\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, "
      "%20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, "
      "%38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, "
      "%56, %57, %58, %59, %60, %61, %62, %63}, "
      "%64, %65, 1, 1, 1, 0, 0;\n"
      "}\n"
      : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]),
        "+f"(d[1][2]), "+f"(d[1][3]), "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]),
        "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3]), "+f"(d[4][0]), "+f"(d[4][1]),
        "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]), "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]),
        "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]), "+f"(d[7][0]), "+f"(d[7][1]),
        "+f"(d[7][2]), "+f"(d[7][3]), "+f"(d[8][0]), "+f"(d[8][1]), "+f"(d[8][2]), "+f"(d[8][3]),
        "+f"(d[9][0]), "+f"(d[9][1]), "+f"(d[9][2]), "+f"(d[9][3]), "+f"(d[10][0]), "+f"(d[10][1]),
        "+f"(d[10][2]), "+f"(d[10][3]), "+f"(d[11][0]), "+f"(d[11][1]), "+f"(d[11][2]),
        "+f"(d[11][3]), "+f"(d[12][0]), "+f"(d[12][1]), "+f"(d[12][2]), "+f"(d[12][3]),
        "+f"(d[13][0]), "+f"(d[13][1]), "+f"(d[13][2]), "+f"(d[13][3]), "+f"(d[14][0]),
        "+f"(d[14][1]), "+f"(d[14][2]), "+f"(d[14][3]), "+f"(d[15][0]), "+f"(d[15][1]),
        "+f"(d[15][2]), "+f"(d[15][3])
      : "l"(a), "l"(b));
#else
  __trap();
#endif
}

__device__ __forceinline__ void WgmmaM64N64(float (&d)[8][4], uint64_t a, uint64_t b) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile(
      "{\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, "
      "%20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "
      "%32, %33, 1, 1, 1, 0, 0;\n"
      "}\n"
      : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]),
        "+f"(d[1][2]), "+f"(d[1][3]), "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]),
        "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3]), "+f"(d[4][0]), "+f"(d[4][1]),
        "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]), "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]),
        "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]), "+f"(d[7][0]), "+f"(d[7][1]),
        "+f"(d[7][2]), "+f"(d[7][3])
      : "l"(a), "l"(b));
#else
  __trap();
#endif
}

// Shared-memory layout of the attention kernel, in bytes from a 1024-aligned base.
struct SmemLayout {
  int a = 0;     // latent tile: rank_tiles x [tile x 128 B], swizzled
  int b = 0;     // U ring: kStages x [head_dim x 128 B], swizzled
  int v = 0;     // value codes and (scale, zero) pairs of the tile, one head: [tile x v_row]
  int q = 0;     // the block's query heads, raw 16-bit: [heads x group x head_dim]
  int red = 0;   // P V partial sums: [warps x group x head_dim] f32
  int prob = 0;  // scores, then probabilities: [group x tile] f32
  int ml = 0;    // per query head of the group: (max, sum) f32
  int src = 0;   // per row: latent slot or exact row (int64)
  int pos = 0;   // per row: position (int32)
  int kind = 0;  // per row: RowKind (int32)
  int bytes = 0;
};

inline int AlignUp(int x, int a) { return (x + a - 1) / a * a; }

inline SmemLayout MakeSmemLayout(int warps, int rank, int head_dim, int group, int heads,
                                 int v_row_bytes) {
  const int tile = warps * 16;
  SmemLayout l;
  int off = 0;
  auto take = [&off](int bytes, int align) {
    off = AlignUp(off, align);
    const int at = off;
    off += bytes;
    return at;
  };
  l.a = take(tile * 128 * static_cast<int>(CeilDiv(rank, kKTile)), 1024);
  l.b = take(kStages * head_dim * 128, 1024);
  l.v = take(tile * v_row_bytes, 16);
  l.q = take(heads * group * head_dim * 2, 16);
  l.red = take(warps * group * head_dim * 4, 16);
  l.prob = take(group * tile * 4, 16);
  l.ml = take(group * 8, 16);
  l.src = take(tile * 8, 16);
  l.pos = take(tile * 4, 16);
  l.kind = take(tile * 4, 16);
  l.bytes = off + 1024;  // room to align the dynamic base
  return l;
}

struct AttentionParams {
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
  float* partial_o;
  float* partial_lse;
  int max_cached;
  int max_tiles;
  int num_heads;
  int heads_per_block;
  int v_code_bytes;  // one head's value codes per token
  int v_pairs;       // one head's (scale, zero) pairs per token; 0 for 16-bit values
  int v_row_bytes;
  bool bf16;
  bool spread_u_reads;
  bool stream_latents;
  SmemLayout smem;
};

__device__ __forceinline__ float2 Bits32ToFloat2(uint32_t bits, bool bf16) {
  if (bf16) {
    return __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&bits));
  }
  return __half22float2(*reinterpret_cast<const __half2*>(&bits));
}

template <int kHeadDim, int kGroup, int kWarps, bool kWgmma>
__global__ void __launch_bounds__(kWarps * 32, 1)
    SparseAttentionKernel(const __grid_constant__ AttentionParams p) {
  constexpr int kThreads = kWarps * 32;
  constexpr int kTile = kWarps * 16;
  constexpr int kBlocks = kHeadDim / 8;  // n8 blocks of a key row in the accumulators
  constexpr int kHalf = kBlocks / 2;     // RoPE pairs block j with block j + kHalf
  constexpr int kChunks = kHeadDim / 8;  // 8-value chunks of a row in P V
  constexpr int kStripesPerWarp = 32 / kChunks;
  constexpr int kStripes = kWarps * kStripesPerWarp;
  static_assert(kHeadDim == 64 || kHeadDim == 128, "head_dim 64 or 128");

  extern __shared__ uint8_t smem_raw[];
  uint8_t* smem = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) &
                                             ~static_cast<uintptr_t>(1023));
  const uint32_t smem_base = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  const SmemLayout& lay = p.smem;
  int64_t* row_src = reinterpret_cast<int64_t*>(smem + lay.src);
  int32_t* row_pos = reinterpret_cast<int32_t*>(smem + lay.pos);
  int32_t* row_kind = reinterpret_cast<int32_t*>(smem + lay.kind);
  float* prob = reinterpret_cast<float*>(smem + lay.prob);
  float2* ml = reinterpret_cast<float2*>(smem + lay.ml);
  float* red = reinterpret_cast<float*>(smem + lay.red);
  uint16_t* q_s = reinterpret_cast<uint16_t*>(smem + lay.q);

  const SalsKvCache& c = p.cache;
  const int tile = blockIdx.x;
  const int b = blockIdx.y;
  const int kv_head0 = blockIdx.z * p.heads_per_block;
  const int cached = min(c.kv_lens[b], p.max_cached);
  const SalsSelection sel = SalsPlanSelection(p.policy, cached);
  const int n_sink = min(sel.sink_end, cached);
  const int n_recent = max(0, cached - sel.recent_begin);
  const int attended = sel.topk + n_sink + n_recent + 1;
  const int row0 = tile * kTile;
  if (row0 >= attended) return;
  const int width = c.width();
  const int tid = threadIdx.x;
  const int warp = tid / 32;
  const int lane = tid % 32;

  // Rows: the selected tokens, then sinks, recent tokens and the new token (ResolveSalsRow).
  int any_latent = 0;
  for (int r = tid; r < kTile; r += kThreads) {
    const int e = row0 + r;
    internal::SalsRow row;
    if (e < attended) {
      row =
          internal::ResolveSalsRow(c, sel, b, cached, e, n_sink, n_recent, p.selected, p.max_topk);
    }
    const int kind = row.kind;
    const int pos = row.pos;
    const int64_t src = row.src;
    row_kind[r] = kind;
    row_pos[r] = pos;
    row_src[r] = src;
    any_latent |= kind == kLatent;
  }
  const bool need_gemm = __syncthreads_or(any_latent) != 0;

  const int rank = p.policy.rank;
  const int rank_tiles = (rank + kKTile - 1) / kKTile;
  const int heads = p.heads_per_block;
  const int total_stages = need_gemm ? heads * rank_tiles : 0;
  // The block's order of heads and of k-tiles within a head (plan.spread_u_reads).
  const int head_shift = p.spread_u_reads ? (blockIdx.x + blockIdx.y) % heads : 0;
  const int ktile_shift =
      p.spread_u_reads ? (blockIdx.x * 5 + blockIdx.y * 3 + blockIdx.z) % rank_tiles : 0;
  auto head_of = [&](int hh) { return (hh + head_shift) % heads; };  // index in the block
  auto ktile_of = [&](int kt) { return (kt + ktile_shift) % rank_tiles; };

  // The tile's latent rows, dims [64 kt, 64 kt + 64); other rows and dims past the rank are 0.
  auto issue_latents = [&](int kt) {
    const uint32_t dst = smem_base + lay.a + kt * (kTile * 128);
    for (int idx = tid; idx < kTile * 8; idx += kThreads) {
      const int r = idx / 8;
      const int ch = idx % 8;
      const int col = kt * kKTile + ch * 8;
      const bool valid = row_kind[r] == kLatent && col < rank;
      CpAsync16(dst + Swizzled(r, ch), c.latent + (valid ? row_src[r] * c.rank + col : 0), valid);
    }
  };
  // Stage s: a 64-dim k-tile of the U rows of one head; with plan.stream_latents the first
  // head's stages also bring the latent k-tile they multiply.
  auto issue_stage = [&](int s) {
    const int kt = ktile_of(s % rank_tiles);
    const __half* u = c.basis + static_cast<int64_t>(kv_head0 + head_of(s / rank_tiles)) *
                                    kHeadDim * c.basis_stride;
    const uint32_t dst = smem_base + lay.b + (s % kStages) * (kHeadDim * 128);
    for (int idx = tid; idx < kHeadDim * 8; idx += kThreads) {
      const int n = idx / 8;
      const int ch = idx % 8;
      const int col = kt * kKTile + ch * 8;
      const bool valid = col < rank;
      CpAsync16(dst + Swizzled(n, ch), u + n * c.basis_stride + (valid ? col : 0), valid);
    }
    if (p.stream_latents && s < rank_tiles) issue_latents(kt);
  };
  // The latent rows' value codes and (scale, zero) pairs of KV head kvh.
  auto issue_values = [&](int kvh) {
    const int code_chunks = p.v_code_bytes / 16;
    const int per_row = code_chunks + p.v_pairs;
    const int64_t first_group =
        p.v_pairs > 0 ? static_cast<int64_t>(kvh) * kHeadDim / c.value_group_size : 0;
    for (int idx = tid; idx < kTile * per_row; idx += kThreads) {
      const int r = idx / per_row;
      const int e = idx % per_row;
      if (row_kind[r] != kLatent) continue;
      const uint32_t dst = smem_base + lay.v + r * p.v_row_bytes;
      if (e < code_chunks) {
        CpAsync16(dst + e * 16,
                  c.value_codes + row_src[r] * c.code_bytes() +
                      static_cast<int64_t>(kvh) * p.v_code_bytes + e * 16,
                  true);
      } else {
        const int i = e - code_chunks;
        CpAsync4(dst + p.v_code_bytes + i * 4,
                 c.value_scale_zero + row_src[r] * c.groups() + first_group + i);
      }
    }
  };

  if (need_gemm) {
    if (!p.stream_latents) {
      for (int kt = 0; kt < rank_tiles; ++kt) issue_latents(kt);  // with stage 0's group
    }
    for (int s = 0; s < kAhead; ++s) {
      if (s < total_stages) issue_stage(s);
      CpAsyncCommit();
    }
  }
  for (int idx = tid; idx < heads * kGroup * kHeadDim; idx += kThreads) {
    q_s[idx] = p.q[b * p.q_row_stride + static_cast<int64_t>(kv_head0) * kGroup * kHeadDim + idx];
  }

  // This thread's accumulator rows (fragment rows lane / 4 and + 8 of its warp's 16) and the
  // RoPE cos/sin of their dims 8j + 2(lane % 4) + {0, 1}, j < kHalf: the same for every head.
  const int quad = lane % 4;
  const int rows[2] = {warp * 16 + lane / 4, warp * 16 + lane / 4 + 8};
  float cs[2][kHalf][2];
  float sn[2][kHalf][2];
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const float pos = static_cast<float>(row_pos[rows[i]]);
    const bool rotate = row_kind[rows[i]] == kLatent;
#pragma unroll
    for (int j = 0; j < kHalf; ++j) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        cs[i][j][e] = 1.0f;
        sn[i][j][e] = 0.0f;
        if (rotate) sincosf(pos * p.inv_freq[8 * j + 2 * quad + e], &sn[i][j][e], &cs[i][j][e]);
      }
    }
  }

  int stage = 0;
  for (int hh = 0; hh < heads; ++hh) {
    const int local_head = head_of(hh);
    const int kvh = kv_head0 + local_head;
    float acc[kBlocks][4];
#pragma unroll
    for (int j = 0; j < kBlocks; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[j][e] = 0.0f;
    }
    if (need_gemm) {
      for (int kt = 0; kt < rank_tiles; ++kt, ++stage) {
        CpAsyncWait<kAhead - 1>();  // this stage landed (newer ones may still be pending)
        if constexpr (kWgmma) {
          FenceProxyAsync();
          WgmmaWait<1>();  // the wgmma that read the slot refilled below is done
        }
        __syncthreads();
        if (stage + kAhead < total_stages) issue_stage(stage + kAhead);
        if (kt == 0) issue_values(kvh);
        CpAsyncCommit();
        const uint32_t a_tile = smem_base + lay.a + ktile_of(kt) * (kTile * 128);
        const uint32_t b_tile = smem_base + lay.b + (stage % kStages) * (kHeadDim * 128);
        if constexpr (kWgmma) {
          FenceAccumulators(acc);
          WgmmaFence();
          const uint32_t a_rows = a_tile + (warp / 4) * (64 * 128);
#pragma unroll
          for (int kk = 0; kk < kKTile / 16; ++kk) {
            if constexpr (kHeadDim == 128) {
              WgmmaM64N128(acc, SmemDescriptor(a_rows + kk * 32), SmemDescriptor(b_tile + kk * 32));
            } else {
              WgmmaM64N64(acc, SmemDescriptor(a_rows + kk * 32), SmemDescriptor(b_tile + kk * 32));
            }
          }
          WgmmaCommit();
          FenceAccumulators(acc);
        } else {
          const uint8_t* a_ptr = smem + (a_tile - smem_base);
          const uint8_t* b_ptr = smem + (b_tile - smem_base);
#pragma unroll
          for (int kk = 0; kk < kKTile / 16; ++kk) {
            uint32_t af[4];
            const int ar = warp * 16 + (lane & 7) + ((lane >> 3) & 1) * 8;
            LdMatrixX4<false>(
                af, reinterpret_cast<const __half*>(a_ptr + Swizzled(ar, 2 * kk + (lane >> 4))));
#pragma unroll
            for (int nb = 0; nb < kHeadDim / 16; ++nb) {
              uint32_t bf[4];
              const int bn = nb * 16 + (lane & 7) + (lane >> 4) * 8;
              LdMatrixX4<false>(bf, reinterpret_cast<const __half*>(
                                        b_ptr + Swizzled(bn, 2 * kk + ((lane >> 3) & 1))));
              MmaF16(acc[2 * nb], af, bf[0], bf[1]);
              MmaF16(acc[2 * nb + 1], af, bf[2], bf[3]);
            }
          }
        }
      }
      if constexpr (kWgmma) {
        WgmmaWait<0>();
        FenceAccumulators(acc);
      }
    }
    // This head's values: their group was committed at the head's first step, so the groups
    // after it (the head's later steps, which prefetch the next head's U) may stay in flight.
    static_assert(kAhead == 3, "the wait below covers 0 .. kAhead - 1 groups");
    switch (min(rank_tiles - 1, kAhead - 1)) {
      case 0:
        CpAsyncWait<0>();
        break;
      case 1:
        CpAsyncWait<1>();
        break;
      default:
        CpAsyncWait<kAhead - 1>();
        break;
    }
    __syncthreads();

    // Keys: latent rows rotate at their positions; exact rows and the new token load theirs.
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int r = rows[i];
      const int kind = row_kind[r];
      if (kind == kLatent) {
#pragma unroll
        for (int j = 0; j < kHalf; ++j) {
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const float x1 = acc[j][2 * i + e];
            const float x2 = acc[j + kHalf][2 * i + e];
            acc[j][2 * i + e] = x1 * cs[i][j][e] - x2 * sn[i][j][e];
            acc[j + kHalf][2 * i + e] = x2 * cs[i][j][e] + x1 * sn[i][j][e];
          }
        }
      } else if (kind == kExact) {
        const __half* k = c.exact_k + row_src[r] * width + static_cast<int64_t>(kvh) * kHeadDim;
#pragma unroll
        for (int j = 0; j < kBlocks; ++j) {
          const float2 f = __half22float2(*reinterpret_cast<const __half2*>(k + 8 * j + 2 * quad));
          acc[j][2 * i] = f.x;
          acc[j][2 * i + 1] = f.y;
        }
      } else if (kind == kNew) {
        const uint16_t* k = p.k_new + b * p.kv_row_stride + static_cast<int64_t>(kvh) * kHeadDim;
#pragma unroll
        for (int j = 0; j < kBlocks; ++j) {
          acc[j][2 * i] = internal::SalsBits16ToFloat(k[8 * j + 2 * quad], p.bf16);
          acc[j][2 * i + 1] = internal::SalsBits16ToFloat(k[8 * j + 2 * quad + 1], p.bf16);
        }
      }
    }

    // Scores (log2 units) of the group's query heads; the quad holds a row's 128 dims.
#pragma unroll
    for (int g = 0; g < kGroup; ++g) {
      const uint32_t* qg =
          reinterpret_cast<const uint32_t*>(q_s + (local_head * kGroup + g) * kHeadDim) + quad;
      float part[2] = {0.0f, 0.0f};
#pragma unroll
      for (int j = 0; j < kBlocks; ++j) {
        const float2 qv = Bits32ToFloat2(qg[4 * j], p.bf16);
        part[0] = fmaf(qv.x, acc[j][0], fmaf(qv.y, acc[j][1], part[0]));
        part[1] = fmaf(qv.x, acc[j][2], fmaf(qv.y, acc[j][3], part[1]));
      }
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        part[i] += __shfl_xor_sync(0xffffffffu, part[i], 1);
        part[i] += __shfl_xor_sync(0xffffffffu, part[i], 2);
        if (quad == 0) {
          prob[g * kTile + rows[i]] =
              row_kind[rows[i]] != kInvalid ? part[i] * p.scale_log2 : -INFINITY;
        }
      }
    }
    __syncthreads();

    // The tile's softmax per query head: max, probabilities, sum.
    for (int g = warp; g < kGroup; g += kWarps) {
      float mx = -INFINITY;
      for (int r = lane; r < kTile; r += 32) mx = fmaxf(mx, prob[g * kTile + r]);
      mx = WarpMax(mx);
      float sum = 0.0f;
      for (int r = lane; r < kTile; r += 32) {
        const float pr = exp2f(prob[g * kTile + r] - mx);
        prob[g * kTile + r] = pr;
        sum += pr;
      }
      sum = WarpSum(sum);
      if (lane == 0) ml[g] = make_float2(mx, sum);
    }
    __syncthreads();

    // P V: lane group `stripe` takes rows stripe, stripe + kStripes, ...; lane `chunk` of it
    // eight value dims.
    const int chunk = lane % kChunks;
    const int stripe = warp * kStripesPerWarp + lane / kChunks;
    const int d0 = chunk * 8;
    const int pair = p.v_pairs > 1 ? d0 / c.value_group_size : 0;
    float o[kGroup][8];
#pragma unroll
    for (int g = 0; g < kGroup; ++g) {
#pragma unroll
      for (int e = 0; e < 8; ++e) o[g][e] = 0.0f;
    }
    for (int r = stripe; r < kTile; r += kStripes) {
      const int kind = row_kind[r];
      if (kind == kInvalid) continue;
      float v[8];
      if (kind == kLatent) {
        const uint8_t* vr = smem + lay.v + r * p.v_row_bytes;
        if (c.value_bits == 16) {
          const uint4 raw = *reinterpret_cast<const uint4*>(vr + d0 * 2);
          const __half2* h = reinterpret_cast<const __half2*>(&raw);
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const float2 f = __half22float2(h[e]);
            v[2 * e] = f.x;
            v[2 * e + 1] = f.y;
          }
        } else {
          const __half2 sz = reinterpret_cast<const __half2*>(vr + p.v_code_bytes)[pair];
          const float scale = __low2float(sz);
          const float zero = __high2float(sz);
          const uint32_t bits = c.value_bits == 4 ? *reinterpret_cast<const uint32_t*>(vr + d0 / 2)
                                                  : *reinterpret_cast<const uint16_t*>(vr + d0 / 4);
          const int shift = c.value_bits;
          const uint32_t mask = (1u << shift) - 1;
#pragma unroll
          for (int e = 0; e < 8; ++e) {
            // code * scale + zero, rounded as the reference does (no fused multiply-add).
            v[e] =
                __fadd_rn(__fmul_rn(static_cast<float>((bits >> (e * shift)) & mask), scale), zero);
          }
        }
      } else if (kind == kExact) {
        const uint4 raw = *reinterpret_cast<const uint4*>(
            c.exact_v + row_src[r] * width + static_cast<int64_t>(kvh) * kHeadDim + d0);
        const __half2* h = reinterpret_cast<const __half2*>(&raw);
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const float2 f = __half22float2(h[e]);
          v[2 * e] = f.x;
          v[2 * e + 1] = f.y;
        }
      } else {
        const uint16_t* vn =
            p.v_new + b * p.kv_row_stride + static_cast<int64_t>(kvh) * kHeadDim + d0;
#pragma unroll
        for (int e = 0; e < 8; ++e) v[e] = internal::SalsBits16ToFloat(vn[e], p.bf16);
      }
#pragma unroll
      for (int g = 0; g < kGroup; ++g) {
        const float pr = prob[g * kTile + r];
#pragma unroll
        for (int e = 0; e < 8; ++e) o[g][e] = fmaf(pr, v[e], o[g][e]);
      }
    }
#pragma unroll
    for (int off = kChunks; off < 32; off *= 2) {
#pragma unroll
      for (int g = 0; g < kGroup; ++g) {
#pragma unroll
        for (int e = 0; e < 8; ++e) o[g][e] += __shfl_xor_sync(0xffffffffu, o[g][e], off);
      }
    }
    if (lane < kChunks) {
#pragma unroll
      for (int g = 0; g < kGroup; ++g) {
#pragma unroll
        for (int e = 0; e < 8; ++e) red[(warp * kGroup + g) * kHeadDim + d0 + e] = o[g][e];
      }
    }
    __syncthreads();
    for (int idx = tid; idx < kGroup * kHeadDim; idx += kThreads) {
      const int g = idx / kHeadDim;
      const int d = idx % kHeadDim;
      float sum = 0.0f;
#pragma unroll
      for (int w = 0; w < kWarps; ++w) sum += red[w * kGroup * kHeadDim + idx];
      const float2 stats = ml[g];
      const int64_t part =
          (static_cast<int64_t>(b) * p.max_tiles + tile) * p.num_heads + kvh * kGroup + g;
      // A tile of only invalid selections (garbage in `selected`) contributes nothing.
      const bool empty = !(stats.y > 0.0f);
      p.partial_o[part * kHeadDim + d] = empty ? 0.0f : sum / stats.y;
      if (d == 0) p.partial_lse[part] = empty ? -INFINITY : stats.x + log2f(stats.y);
    }
  }
}

// One block per (sequence, head): weights each tile by exp2(lse - max lse) and normalizes.
template <typename T>
__global__ void __launch_bounds__(kCombineThreads)
    CombineKernel(const int32_t* __restrict__ kv_lens, SalsSelectionPolicy policy, int max_cached,
                  int tile_tokens, const float* __restrict__ partial_o,
                  const float* __restrict__ partial_lse, int max_tiles, int num_heads, int head_dim,
                  T* __restrict__ out) {
  const int b = blockIdx.x / num_heads;
  const int head = blockIdx.x % num_heads;
  const int cached = min(kv_lens[b], max_cached);
  const SalsSelection sel = SalsPlanSelection(policy, cached);
  const int tiles = min(max_tiles, (sel.attended(cached) + tile_tokens - 1) / tile_tokens);
  auto part = [&](int t) { return (static_cast<int64_t>(b) * max_tiles + t) * num_heads + head; };
  float mx = -INFINITY;
  for (int t = 0; t < tiles; ++t) mx = fmaxf(mx, partial_lse[part(t)]);
  const float ref = mx == -INFINITY ? 0.0f : mx;
  for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
    float sum = 0.0f;
    float value = 0.0f;
    for (int t = 0; t < tiles; ++t) {
      const float w = exp2f(partial_lse[part(t)] - ref);
      sum += w;
      value = fmaf(w, partial_o[part(t) * head_dim + d], value);
    }
    out[(static_cast<int64_t>(b) * num_heads + head) * head_dim + d] =
        FromFloat<T>(sum > 0.0f ? value / sum : 0.0f);
  }
}

int ValueRowBytes(const SalsKvCache& c) {
  const int codes = c.head_dim * c.value_bits / 8;
  const int pairs = c.value_bits == 16 ? 0 : std::max(1, c.head_dim / c.value_group_size);
  return AlignUp(codes + 4 * pairs, 16);
}

// Calls f.template operator()<kHeadDim, kGroup, kWarps, kWgmma>() for the plan's shapes: the one
// place where they become template parameters (ValidateDecode refused everything else).
template <typename F>
absl::Status DispatchSparse(int head_dim, int group, int warps, bool wgmma, F&& f) {
  auto with_warps = [&]<int kHeadDim, int kGroup>() -> absl::Status {
    auto with_mma = [&]<int kWarps>() -> absl::Status {
      return wgmma ? f.template operator()<kHeadDim, kGroup, kWarps, true>()
                   : f.template operator()<kHeadDim, kGroup, kWarps, false>();
    };
    return warps == 8 ? with_mma.template operator()<8>() : with_mma.template operator()<4>();
  };
  auto with_group = [&]<int kHeadDim>() -> absl::Status {
    switch (group) {
      case 1:
        return with_warps.template operator()<kHeadDim, 1>();
      case 2:
        return with_warps.template operator()<kHeadDim, 2>();
      case 4:
        return with_warps.template operator()<kHeadDim, 4>();
      default:
        return with_warps.template operator()<kHeadDim, 8>();
    }
  };
  return head_dim == 128 ? with_group.template operator()<128>()
                         : with_group.template operator()<64>();
}

}  // namespace

absl::Status internal::ValidateSalsDecode(const char* what, const SalsKvCache& c,
                                          const SalsSelectionPolicy& p, int num_heads) {
  SALS_KERNELS_RETURN_IF_ERROR(ValidateSalsKvCache(c));
  SALS_KERNELS_RETURN_IF_ERROR(ValidateSalsPolicy(c, p));
  if (c.block_tables == nullptr || c.kv_lens == nullptr || c.exact_slots == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": null per-sequence pointer"));
  }
  const int group =
      num_heads > 0 && num_heads % c.num_kv_heads == 0 ? num_heads / c.num_kv_heads : 0;
  if (c.head_dim != 64 && c.head_dim != 128) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": unsupported head_dim ", c.head_dim, " (have 64, 128)"));
  }
  if (group != 1 && group != 2 && group != 4 && group != 8) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": unsupported GQA group ", num_heads, "/",
                                                   c.num_kv_heads, " (have 1, 2, 4, 8)"));
  }
  if (p.rank > kMaxRank) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": rank ", p.rank, " above the supported ", kMaxRank));
  }
  const int gs = c.value_group_size;
  if (c.value_bits != 16 && (gs % 8 != 0 || (c.head_dim % gs != 0 && gs % c.head_dim != 0))) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, ": value_group_size ", gs, " must be a multiple of 8 that divides head_dim ",
        c.head_dim, " or is a multiple of it"));
  }
  return absl::OkStatus();
}

bool SalsWgmmaAvailable() {
  static const bool available = [] {
    int compiled = 0;
    if (cudaMemcpyFromSymbol(&compiled, g_wgmma_compiled, sizeof(int)) != cudaSuccess) {
      static_cast<void>(cudaGetLastError());  // no device: report false, leave no sticky error
      return false;
    }
    return compiled != 0;
  }();
  return available;
}

absl::StatusOr<SalsDecodePlan> PlanSalsDecode(const SalsKvCache& cache,
                                              const SalsSelectionPolicy& policy, int batch,
                                              int num_heads, int max_cached, SalsKeyRebuild rebuild,
                                              bool allow_wgmma) {
  SALS_KERNELS_RETURN_IF_ERROR(
      internal::ValidateSalsDecode("PlanSalsDecode", cache, policy, num_heads));
  if (batch < 0 || batch > 65535 || max_cached < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("PlanSalsDecode: bad batch ", batch, " or max_cached ", max_cached));
  }
  int device = 0;
  int num_sms = 0;
  int max_smem = 0;
  SALS_CUDA_RETURN_IF_ERROR(cudaGetDevice(&device));
  SALS_CUDA_RETURN_IF_ERROR(
      cudaDeviceGetAttribute(&num_sms, cudaDevAttrMultiProcessorCount, device));
  SALS_CUDA_RETURN_IF_ERROR(
      cudaDeviceGetAttribute(&max_smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  const SalsSelection sel = SalsPlanSelection(policy, max_cached);
  const int group = num_heads / cache.num_kv_heads;
  SalsDecodePlan plan;
  plan.batch = batch;
  plan.num_heads = num_heads;
  plan.max_cached = max_cached;
  plan.max_middle = std::max(1, sel.middle());
  plan.max_topk = std::max(1, sel.topk);
  plan.score_stride = AlignUp(policy.score_dims, 8);
  plan.wgmma = allow_wgmma && SalsWgmmaAvailable();
  // Small scoring blocks put many loads in flight when there is little to score; large ones
  // spread a block's fixed cost (its part of q~ and block ids) when there is much.
  plan.score_block_tokens =
      static_cast<int64_t>(batch) * plan.max_middle >= kLargeScoreWork ? 512 : 64;
  plan.topk_cluster = SalsTopKClusterFor(plan.max_middle);
  const int attended = sel.attended(max_cached);
  plan.rebuild = rebuild;
  if (rebuild == SalsKeyRebuild::kGemm) {
    if (cache.rank % 8 != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "PlanSalsDecode: kGemm needs a stored rank multiple of 8, got ", cache.rank));
    }
    plan.wgmma = false;
    plan.heads_per_block = internal::SalsGemmHeadsPerBlock(cache.num_kv_heads, group);
    plan.chunk_sequences = internal::SalsGemmChunkSequences(cache, batch, plan.max_topk);
    // 64-row tiles unless that leaves fewer than two blocks per multiprocessor in a round.
    const int64_t blocks64 = static_cast<int64_t>(plan.chunk_sequences) * CeilDiv(attended, 64) *
                             (cache.num_kv_heads / plan.heads_per_block);
    plan.tile_tokens = blocks64 >= 2 * num_sms ? 64 : 32;
    plan.max_tiles = std::max(1, static_cast<int>(CeilDiv(attended, plan.tile_tokens)));
    return plan;
  }
  // Blocks run in waves over the multiprocessors (one block each: the latent tile fills shared
  // memory); a block costs about its heads plus one head's worth of fixed work (loading the tile,
  // the query, the RoPE table). Take the tile of 128 tokens where it fits, and the head group
  // with the fewest waves x cost, larger groups on ties (less latent traffic).
  for (int warps : {8, 4}) {
    const int tile = warps * 16;
    const int tiles = static_cast<int>(CeilDiv(attended, tile));
    int64_t best_cost = std::numeric_limits<int64_t>::max();
    int best_heads = 1;
    for (int heads : {8, 4, 2, 1}) {
      if (cache.num_kv_heads % heads != 0) continue;
      const int64_t blocks = static_cast<int64_t>(batch) * tiles * (cache.num_kv_heads / heads);
      const int64_t cost = CeilDiv(blocks, num_sms) * (heads + 1);
      if (cost < best_cost) {
        best_cost = cost;
        best_heads = heads;
      }
    }
    const SmemLayout lay =
        MakeSmemLayout(warps, policy.rank, cache.head_dim, group, best_heads, ValueRowBytes(cache));
    if (lay.bytes <= max_smem) {
      plan.tile_tokens = tile;
      plan.max_tiles = std::max(1, tiles);
      plan.heads_per_block = best_heads;
      return plan;
    }
  }
  return absl::InvalidArgumentError(
      absl::StrCat("PlanSalsDecode: rank ", policy.rank, " with ", cache.value_bits,
                   "-bit values needs more shared memory than the device's ", max_smem, " bytes"));
}

SalsWorkspaceLayout SalsDecodeWorkspace(const SalsKvCache& cache, const SalsDecodePlan& plan) {
  SalsWorkspaceLayout w;
  size_t off = 0;
  auto take = [&off](size_t bytes) {
    const size_t at = off;
    off = (off + bytes + 255) / 256 * 256;
    return at;
  };
  const size_t batch = plan.batch;
  const size_t chunks = CeilDiv(cache.width(), kQueryChunkRows);
  w.q_partial = take(chunks * batch * plan.score_stride * sizeof(float));
  w.q_latent = take(batch * plan.score_stride * sizeof(float));
  w.scores = take(batch * plan.max_middle * sizeof(float));
  w.selected = take(batch * plan.max_topk * sizeof(int32_t));
  const size_t parts = batch * plan.max_tiles * plan.num_heads;
  w.partial_o = take(parts * cache.head_dim * sizeof(float));
  w.partial_lse = take(parts * sizeof(float));
  if (plan.rebuild == SalsKeyRebuild::kGemm) {
    const size_t rows = static_cast<size_t>(plan.chunk_sequences) * plan.max_topk;
    w.gathered = take(rows * CeilDiv(cache.rank, 8) * 8 * sizeof(__half));
    w.rebuilt = take(rows * cache.width() * sizeof(__half));
  }
  w.bytes = off;
  return w;
}

absl::Status SalsSparseAttention(DType dtype, const SalsKvCache& cache,
                                 const SalsSelectionPolicy& policy, const SalsDecodePlan& plan,
                                 const void* q, int64_t q_row_stride, const void* k_new,
                                 const void* v_new, int64_t kv_row_stride, const float* inv_freq,
                                 float scale, const int32_t* selected, void* workspace, void* out,
                                 cudaStream_t stream, cublasHandle_t blas) {
  SALS_KERNELS_RETURN_IF_ERROR(
      internal::ValidateSalsDecode("SalsSparseAttention", cache, policy, plan.num_heads));
  if (dtype != DType::kF16 && dtype != DType::kBF16) {
    return absl::InvalidArgumentError(
        absl::StrCat("SalsSparseAttention: unsupported activation dtype ", DTypeName(dtype)));
  }
  const SalsSelection longest = SalsPlanSelection(policy, std::max(0, plan.max_cached));
  if (plan.rebuild == SalsKeyRebuild::kGemm) {
    if (plan.max_cached < 0 || plan.max_topk < longest.topk ||
        plan.max_tiles * plan.tile_tokens < longest.attended(plan.max_cached) ||
        workspace == nullptr || selected == nullptr || inv_freq == nullptr) {
      return absl::InvalidArgumentError("SalsSparseAttention: bad plan or null pointer");
    }
    if (q_row_stride < static_cast<int64_t>(plan.num_heads) * cache.head_dim ||
        kv_row_stride < cache.width()) {
      return absl::InvalidArgumentError("SalsSparseAttention: row stride shorter than a row");
    }
    if (plan.batch == 0) return absl::OkStatus();
    return internal::SalsGemmSparseAttention(dtype, cache, policy, plan, q, q_row_stride, k_new,
                                             v_new, kv_row_stride, inv_freq, scale, selected,
                                             workspace, out, stream, blas);
  }
  if ((plan.tile_tokens != 64 && plan.tile_tokens != 128) || plan.max_cached < 0 ||
      plan.max_topk < longest.topk ||
      plan.max_tiles * plan.tile_tokens < longest.attended(plan.max_cached) ||
      plan.heads_per_block < 1 || cache.num_kv_heads % plan.heads_per_block != 0 ||
      (plan.wgmma && !SalsWgmmaAvailable()) || workspace == nullptr || selected == nullptr ||
      inv_freq == nullptr) {
    return absl::InvalidArgumentError("SalsSparseAttention: bad plan or null pointer");
  }
  if (q_row_stride < static_cast<int64_t>(plan.num_heads) * cache.head_dim ||
      kv_row_stride < cache.width()) {
    return absl::InvalidArgumentError("SalsSparseAttention: row stride shorter than a row");
  }
  if (plan.batch == 0) return absl::OkStatus();
  const SalsWorkspaceLayout ws = SalsDecodeWorkspace(cache, plan);
  const int group = plan.num_heads / cache.num_kv_heads;
  const int warps = plan.tile_tokens / 16;
  AttentionParams p;
  p.cache = cache;
  p.policy = policy;
  p.q = static_cast<const uint16_t*>(q);
  p.q_row_stride = q_row_stride;
  p.k_new = static_cast<const uint16_t*>(k_new);
  p.v_new = static_cast<const uint16_t*>(v_new);
  p.kv_row_stride = kv_row_stride;
  p.inv_freq = inv_freq;
  p.scale_log2 = scale * kLog2e;
  p.selected = selected;
  p.max_topk = plan.max_topk;
  p.partial_o = reinterpret_cast<float*>(static_cast<uint8_t*>(workspace) + ws.partial_o);
  p.partial_lse = reinterpret_cast<float*>(static_cast<uint8_t*>(workspace) + ws.partial_lse);
  p.max_cached = plan.max_cached;
  p.max_tiles = plan.max_tiles;
  p.num_heads = plan.num_heads;
  p.heads_per_block = plan.heads_per_block;
  p.v_code_bytes = cache.head_dim * cache.value_bits / 8;
  p.v_pairs = cache.value_bits == 16 ? 0 : std::max(1, cache.head_dim / cache.value_group_size);
  p.v_row_bytes = ValueRowBytes(cache);
  p.bf16 = dtype == DType::kBF16;
  p.spread_u_reads = plan.spread_u_reads;
  p.stream_latents = plan.stream_latents;
  p.smem = MakeSmemLayout(warps, policy.rank, cache.head_dim, group, plan.heads_per_block,
                          p.v_row_bytes);
  SALS_KERNELS_RETURN_IF_ERROR(DispatchSparse(
      cache.head_dim, group, warps, plan.wgmma,
      [&]<int kHeadDim, int kGroup, int kWarps, bool kWgmma>() -> absl::Status {
        auto kernel = SparseAttentionKernel<kHeadDim, kGroup, kWarps, kWgmma>;
        SALS_CUDA_RETURN_IF_ERROR(cudaFuncSetAttribute(
            kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, p.smem.bytes));
        const dim3 grid(plan.max_tiles, plan.batch, cache.num_kv_heads / plan.heads_per_block);
        kernel<<<grid, kWarps * 32, p.smem.bytes, stream>>>(p);
        return LastLaunchStatus("SparseAttentionKernel");
      }));
  return internal::LaunchSalsCombine(dtype, cache, policy, plan, p.partial_o, p.partial_lse, out,
                                     stream);
}

absl::Status internal::LaunchSalsCombine(DType dtype, const SalsKvCache& cache,
                                         const SalsSelectionPolicy& policy,
                                         const SalsDecodePlan& plan, const float* partial_o,
                                         const float* partial_lse, void* out, cudaStream_t stream) {
  return internal::DispatchActivation(dtype, "SalsSparseAttention", [&]<typename T>(T) {
    CombineKernel<T><<<plan.batch * plan.num_heads, kCombineThreads, 0, stream>>>(
        cache.kv_lens, policy, plan.max_cached, plan.tile_tokens, partial_o, partial_lse,
        plan.max_tiles, plan.num_heads, cache.head_dim, static_cast<T*>(out));
    return LastLaunchStatus("CombineKernel");
  });
}

absl::Status SalsDecodeAttention(DType dtype, const SalsKvCache& cache,
                                 const SalsSelectionPolicy& policy, const SalsDecodePlan& plan,
                                 const void* q_pre, const void* q, int64_t q_row_stride,
                                 const void* k_new, const void* v_new, int64_t kv_row_stride,
                                 const float* inv_freq, float scale, void* workspace, void* out,
                                 cudaStream_t stream, cublasHandle_t blas) {
  if (workspace == nullptr) {
    return absl::InvalidArgumentError("SalsDecodeAttention: null workspace");
  }
  const SalsWorkspaceLayout ws = SalsDecodeWorkspace(cache, plan);
  uint8_t* base = static_cast<uint8_t*>(workspace);
  float* q_latent = reinterpret_cast<float*>(base + ws.q_latent);
  float* scores = reinterpret_cast<float*>(base + ws.scores);
  int32_t* selected = reinterpret_cast<int32_t*>(base + ws.selected);
  SALS_KERNELS_RETURN_IF_ERROR(SalsLatentQuery(dtype, cache, policy, plan, q_pre, q_row_stride,
                                               reinterpret_cast<float*>(base + ws.q_partial),
                                               q_latent, stream));
  SALS_KERNELS_RETURN_IF_ERROR(SalsLatentScores(cache, policy, plan, q_latent, scores, stream));
  SALS_KERNELS_RETURN_IF_ERROR(SalsTopK(cache, policy, plan, scores, selected, stream));
  return SalsSparseAttention(dtype, cache, policy, plan, q, q_row_stride, k_new, v_new,
                             kv_row_stride, inv_freq, scale, selected, workspace, out, stream,
                             blas);
}

}  // namespace sals::kernels
