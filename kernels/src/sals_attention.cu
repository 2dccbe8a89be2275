// Stage 4 of the SALS decode step (sals_decode.h): the fused sparse-latent attention kernel, its
// plan and workspace, the split combine, and the whole step.
//
// A block serves one sequence, heads_per_block KV heads and a split of the sequence's attended
// rows (selected, sinks, recent, new token), in 64-row tiles. The heads' slice of U (head_dim x
// rank each, 128-byte swizzled k-tiles of 64 latent dims) is loaded into shared memory once per
// block; each warpgroup takes every warpgroups-th tile of the split and, per tile:
//   - gathers the tile's latent rows and packed value rows with cp.async (the next tile's while
//     this one computes, with two buffers),
//   - per head: rebuilds K_h = latent U_h^T on tensor cores (wgmma m64nHk16 from shared memory
//     on sm_90a builds, else mma.sync with ldmatrix), 16 rows per warp; while the wgmma runs the
//     warp dequantizes its rows' values into a private f16 tile;
//   - rotates the keys in registers (RoPE pairs dims j and j + head_dim / 2, which the
//     accumulator layout puts in one thread; cos/sin of the reference's fp32 angle, reduced by
//     2 pi, from the hardware approximations), loads exact keys for rows the exact store holds;
//   - scores the group's queries S^T = K Q^T with mma.sync (the accumulators are the A operand;
//     the group padded to n8), one online-softmax rescale per tile and warp, and accumulates
//     O^T += V^T P with mma.sync (P transposed in registers by movmatrix, V^T by ldmatrix.trans).
// At the end the block's warps merge their (max, sum, O) per query head; the block writes the
// output (one split) or its split's partial output and log-sum-exp for the combine kernel.
//
// Cost (GQA 32/8 x 128, rank 128, batch 16 at 32K, SALS-12.5%): 17.5 GFLOP of rebuild on tensor
// cores; each latent row (256 B) is read once per block of heads from the L2, values once.

#include <algorithm>
#include <bit>
#include <limits>

#include "absl/strings/str_cat.h"
#include "attention_common.cuh"
#include "sals/kernels/sals_decode.h"
#include "sals_rows.cuh"

namespace sals::kernels {
namespace {

using internal::CeilDiv;
using internal::FromFloat;
using internal::kLog2e;
using internal::LastLaunchStatus;
using internal::LdMatrixX4;
using internal::MmaF16;

constexpr int kTileRows = 64;      // attended rows per warpgroup tile (wgmma's m64)
constexpr int kWarpRows = 16;      // rows of a tile per warp
constexpr int kWgThreads = 128;    // a warpgroup
constexpr int kMaxWarpgroups = 2;  // per block: the registers of a thread (one head or two)
constexpr int kKTile = 64;         // latent dims per 128-byte swizzled row
constexpr int kQueryPad = 8;       // the GQA group padded to the score mma's n8
constexpr int kQueryRowPad = 8;    // halves after each query row: fragment loads hit 32 banks
constexpr int kUStreamSlots = 4;   // stream_u: U k-tiles in flight
constexpr int kMaxRank = 1024;
constexpr int kQueryChunkRows = 64;  // SalsLatentQuery's rows of U per block (sals_select.cu)
constexpr int kCombineThreads = 128;
constexpr int64_t kLargeScoreWork = 96 * 1024;  // middle tokens of a batch (measured, H200)
constexpr int kMetaBytes = 16;                  // per tile row: src (int64), pos, kind (int32)

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

// cp.async.wait_group with a run-time count (at most kUStreamSlots).
__device__ __forceinline__ void CpAsyncWaitAtMost(int pending) {
  switch (pending) {
    case 0:
      CpAsyncWait<0>();
      break;
    case 1:
      CpAsyncWait<1>();
      break;
    case 2:
      CpAsyncWait<2>();
      break;
    case 3:
      CpAsyncWait<3>();
      break;
    default:
      CpAsyncWait<kUStreamSlots>();
      break;
  }
}

// A barrier of one warpgroup (ids 1 and 2; 0 is __syncthreads').
__device__ __forceinline__ void WarpgroupSync(int wg) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(wg + 1), "n"(kWgThreads) : "memory");
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

__device__ __forceinline__ void WgmmaWaitAll() {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
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

// D += A B, m16n8k16, bf16 inputs, f32 accumulators.
__device__ __forceinline__ void MmaBF16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                        uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Transposes an 8x8 matrix of 16-bit values held as mma fragments (row lane / 4, columns
// 2 (lane % 4) and + 1).
__device__ __forceinline__ uint32_t Transpose8x8(uint32_t x) {
  uint32_t y;
  asm volatile("movmatrix.sync.aligned.m8n8.trans.b16 %0, %1;\n" : "=r"(y) : "r"(x));
  return y;
}

// (lo, hi) as a bf16 pair plus the pair of what that rounding left over: hi + lo parts carry 16
// significant bits, as much as the f16 path's keys.
__device__ __forceinline__ void SplitBF162(float lo, float hi, uint32_t* big, uint32_t* rest) {
  const __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
  const float2 back = __bfloat1622float2(h);
  const __nv_bfloat162 r = __floats2bfloat162_rn(lo - back.x, hi - back.y);
  *big = *reinterpret_cast<const uint32_t*>(&h);
  *rest = *reinterpret_cast<const uint32_t*>(&r);
}

__device__ __forceinline__ uint32_t HalfBits2(__half2 h) {
  return *reinterpret_cast<const uint32_t*>(&h);
}

__device__ __forceinline__ __half2 BitsHalf2(uint32_t x) {
  return *reinterpret_cast<const __half2*>(&x);
}

// cos and sin of a RoPE angle of any size: Cody-Waite reduction by 2 pi in three parts, then the
// hardware approximations on [-pi, pi] (absolute error ~1e-6, far below fp16 keys' rounding).
__device__ __forceinline__ void RopeSinCos(float angle, float* s, float* c) {
  constexpr float kInv2Pi = 0.15915494309189535f;
  constexpr float k2PiHi = 6.28318548202514648f;  // float(2 pi)
  constexpr float k2PiMid = -1.7484555e-07f;      // 2 pi - k2PiHi, rounded
  constexpr float k2PiLo = -6.0771006e-15f;       // the rest
  const float k = rintf(angle * kInv2Pi);
  float r = fmaf(-k, k2PiHi, angle);
  r = fmaf(-k, k2PiMid, r);
  r = fmaf(-k, k2PiLo, r);
  __sincosf(r, s, c);
}

// Shared-memory layout of the attention kernel, in bytes from a 1024-aligned base.
struct SmemLayout {
  int u = 0;       // U: heads x rank_tiles k-tiles (stream_u: kUStreamSlots) of [head_dim x 128 B]
  int tiles = 0;   // per warpgroup and buffer: latent tile, value rows, row metadata
  int buffer = 0;  // bytes of one buffer (1024-aligned)
  int a = 0;       // within a buffer: rank_tiles x [64 rows x 128 B], swizzled
  int vals = 0;    // within a buffer: [64 rows x heads x v_row_bytes]
  int meta = 0;    // within a buffer: src int64[64], pos int32[64], kind int32[64]
  int vs = 0;      // per warp: its 16 rows of one head's values, f16 [16 x v_stride]
  int v_stride = 0;
  int q = 0;  // the block's queries, raw 16-bit: [heads x kQueryPad x (head_dim + kQueryRowPad)]
  int bytes = 0;
};

inline int AlignUp(int x, int a) { return (x + a - 1) / a * a; }

inline SmemLayout MakeSmemLayout(int head_dim, int rank, int heads, int warpgroups, int buffers,
                                 bool stream_u, int v_row_bytes, int group) {
  const int rank_tiles = static_cast<int>(CeilDiv(rank, kKTile));
  SmemLayout l;
  l.u = 0;
  int off = (stream_u ? kUStreamSlots : heads * rank_tiles) * head_dim * 128;
  l.a = 0;
  l.vals = rank_tiles * kTileRows * 128;
  l.meta = AlignUp(l.vals + kTileRows * heads * v_row_bytes, 16);
  l.buffer = AlignUp(l.meta + kTileRows * kMetaBytes, 1024);
  l.tiles = AlignUp(off, 1024);
  off = l.tiles + warpgroups * buffers * l.buffer;
  l.v_stride = head_dim * 2 + 16;  // 16-byte pad: ldmatrix.trans reads 8 rows conflict-free
  l.vs = AlignUp(off, 16);
  off = l.vs + warpgroups * 4 * kWarpRows * l.v_stride;
  l.q = AlignUp(off, 16);
  off = l.q + heads * kQueryPad * (head_dim + kQueryRowPad) * 2;
  // The final merge reuses the space from 0: per warp and head, (max, sum) and O per query.
  const int merge = warpgroups * 4 * heads * group * (head_dim + 2) * 4;
  l.bytes = std::max(off, merge) + 1024;  // room to align the dynamic base
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
  uint16_t* out;  // max_splits == 1: the output itself
  int max_cached;
  int max_splits;
  int tiles_per_split;
  int num_heads;
  int rank_tiles;
  int buffers;
  bool stream_u;
  int v_code_bytes;  // one head's value codes per token
  int v_pairs;       // one head's (scale, zero) pairs per token; 0 for 16-bit values
  int v_row_bytes;
  int v_group_shift;  // log2(value_group_size) where v_pairs > 1
  bool bf16;
  SmemLayout smem;
};

// Dequantizes 8 values from 16-bit (2-bit codes) or 32-bit (4-bit codes) code words into f16, as
// code * scale + zero with one fp16 rounding. The magic 0x6400 (1024.0) exponent turns a code in
// the low mantissa bits into 1024 + code, exactly.
__device__ __forceinline__ uint4 Dequant4Bit(uint32_t w, __half2 s, __half2 z) {
  const __half2 k1024 = __floats2half2_rn(1024.0f, 1024.0f);
  __half2 h[4];
#pragma unroll
  for (int k = 0; k < 4; ++k) {  // nibbles k and k + 4: dims k and k + 4
    const uint32_t x = ((w >> (4 * k)) & 0x000F000Fu) | 0x64006400u;
    h[k] = __hfma2(__hsub2(BitsHalf2(x), k1024), s, z);
  }
  uint4 out;
  out.x = HalfBits2(__lows2half2(h[0], h[1]));
  out.y = HalfBits2(__lows2half2(h[2], h[3]));
  out.z = HalfBits2(__highs2half2(h[0], h[1]));
  out.w = HalfBits2(__highs2half2(h[2], h[3]));
  return out;
}

// 16 values (dims d .. d + 15) from one 32-bit word of 2-bit codes: half2 k holds dims k and
// k + 8. s and z: (scale, zero) of dims d .. d + 7 in .x, of d + 8 .. d + 15 in .y.
__device__ __forceinline__ void Dequant2Bit(uint32_t w, __half2 s, __half2 z, uint4* lo,
                                            uint4* hi) {
  const __half2 k1024 = __floats2half2_rn(1024.0f, 1024.0f);
  __half2 h[8];
#pragma unroll
  for (int k = 0; k < 8; ++k) {
    const uint32_t x = ((w >> (2 * k)) & 0x00030003u) | 0x64006400u;
    h[k] = __hfma2(__hsub2(BitsHalf2(x), k1024), s, z);
  }
  lo->x = HalfBits2(__lows2half2(h[0], h[1]));
  lo->y = HalfBits2(__lows2half2(h[2], h[3]));
  lo->z = HalfBits2(__lows2half2(h[4], h[5]));
  lo->w = HalfBits2(__lows2half2(h[6], h[7]));
  hi->x = HalfBits2(__highs2half2(h[0], h[1]));
  hi->y = HalfBits2(__highs2half2(h[2], h[3]));
  hi->z = HalfBits2(__highs2half2(h[4], h[5]));
  hi->w = HalfBits2(__highs2half2(h[6], h[7]));
}

template <int kHeadDim, int kGroup, int kHeads, bool kWgmma>
__global__ void __launch_bounds__(kMaxWarpgroups* kWgThreads, 1)
    SparseAttentionKernel(const __grid_constant__ AttentionParams p) {
  constexpr int kBlocks = kHeadDim / 8;   // n8 blocks of a key row in the accumulators
  constexpr int kHalf = kBlocks / 2;      // RoPE pairs block j with block j + kHalf
  constexpr int kKSteps = kHeadDim / 16;  // k16 steps of the score mma; m16 tiles of P V
  static_assert(kHeadDim == 64 || kHeadDim == 128, "head_dim 64 or 128");
  static_assert(kGroup <= kQueryPad, "GQA group above 8");

  extern __shared__ uint8_t smem_raw[];
  uint8_t* smem = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) &
                                             ~static_cast<uintptr_t>(1023));
  const uint32_t smem_base = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  const SmemLayout& lay = p.smem;
  const SalsKvCache& c = p.cache;

  const int split = blockIdx.x;
  const int b = blockIdx.y;
  const int kv_head0 = blockIdx.z * kHeads;
  const int cached = min(c.kv_lens[b], p.max_cached);
  const SalsSelection sel = SalsPlanSelection(p.policy, cached);
  const int n_sink = min(sel.sink_end, cached);
  const int n_recent = max(0, cached - sel.recent_begin);
  const int attended = sel.topk + n_sink + n_recent + 1;
  const int tiles = (attended + kTileRows - 1) / kTileRows;
  const int t_begin = split * p.tiles_per_split;
  const int t_end = min(tiles, t_begin + p.tiles_per_split);
  if (t_begin >= t_end) return;  // the combine reads only the splits a sequence has

  const int tid = threadIdx.x;
  const int num_wgs = blockDim.x / kWgThreads;
  const int wg = tid / kWgThreads;
  const int wtid = tid % kWgThreads;
  const int warp = tid / 32;    // in the block
  const int wwarp = wtid / 32;  // in the warpgroup
  const int lane = tid % 32;
  const int quad = lane % 4;
  const int width = c.width();
  const int rank = p.policy.rank;
  const int rank_tiles = p.rank_tiles;
  const int buffers = p.buffers;

  // ---- Loads.
  auto buffer_offset = [&](int k) { return lay.tiles + (wg * buffers + k % buffers) * lay.buffer; };
  // U of head h, k-tile kt into slot `slot` (all threads of `count` take part).
  auto issue_u = [&](int h, int kt, int slot, int first, int count) {
    const __half* u = c.basis + static_cast<int64_t>(kv_head0 + h) * kHeadDim * c.basis_stride;
    const uint32_t dst = smem_base + lay.u + slot * (kHeadDim * 128);
    for (int idx = first; idx < kHeadDim * 8; idx += count) {
      const int n = idx / 8;
      const int ch = idx % 8;
      const int col = kt * kKTile + ch * 8;
      const bool valid = col < rank;
      CpAsync16(dst + Swizzled(n, ch), u + n * c.basis_stride + (valid ? col : 0), valid);
    }
  };
  // Row wtid / 2 of this warpgroup's tile k (two threads a row): resolved an iteration before
  // its loads are issued, so that the selection and block-table reads are in flight meanwhile.
  auto resolve_row = [&](int k) {
    const int tile = t_begin + wg + k * num_wgs;
    const int e = tile * kTileRows + wtid / 2;
    internal::SalsRow row;
    if (tile < t_end && e < attended) {
      row =
          internal::ResolveSalsRow(c, sel, b, cached, e, n_sink, n_recent, p.selected, p.max_topk);
    }
    return row;
  };
  // Tile k's row metadata, latents and values into buffer k % buffers; the first thread of a
  // row writes its metadata.
  auto issue_tile = [&](int k, const internal::SalsRow& row) {
    const int tile = t_begin + wg + k * num_wgs;
    if (tile >= t_end) return;
    const int r = wtid / 2;  // the lanes of a pair read the two halves of 32-byte sectors
    const int half = wtid % 2;
    const int off = buffer_offset(k);
    if (half == 0) {
      uint8_t* meta = smem + off + lay.meta;
      reinterpret_cast<int64_t*>(meta)[r] = row.src;
      reinterpret_cast<int32_t*>(meta + 8 * kTileRows)[r] = row.pos;
      reinterpret_cast<int32_t*>(meta + 12 * kTileRows)[r] = row.kind;
    }
    const bool latent = row.kind == kLatent;
    const uint32_t a = smem_base + off + lay.a;
    for (int ch = half; ch < rank_tiles * 8; ch += 2) {
      const int col = ch * 8;
      const bool valid = latent && col < rank;
      CpAsync16(a + (ch / 8) * (kTileRows * 128) + Swizzled(r, ch % 8),
                c.latent + (valid ? row.src * c.rank + col : 0), valid);
    }
    if (!latent) return;
    const int code_chunks = p.v_code_bytes / 16;
    const int per_head = code_chunks + p.v_pairs;
    const uint32_t vals = smem_base + off + lay.vals + r * kHeads * p.v_row_bytes;
    for (int idx = half; idx < kHeads * per_head; idx += 2) {
      const int h = idx / per_head;
      const int item = idx % per_head;
      const int kvh = kv_head0 + h;
      const uint32_t dst = vals + h * p.v_row_bytes;
      if (item < code_chunks) {
        CpAsync16(dst + item * 16,
                  c.value_codes + row.src * c.code_bytes() +
                      static_cast<int64_t>(kvh) * p.v_code_bytes + item * 16,
                  true);
      } else {
        const int i = item - code_chunks;
        const int64_t first_group = static_cast<int64_t>(kvh) * kHeadDim / c.value_group_size;
        CpAsync4(dst + p.v_code_bytes + i * 4,
                 c.value_scale_zero + row.src * c.groups() + first_group + i);
      }
    }
  };

  // Queries of the block's heads, zero-padded to kQueryPad per head.
  uint16_t* q_s = reinterpret_cast<uint16_t*>(smem + lay.q);
  for (int idx = tid; idx < kHeads * kQueryPad * kHeadDim; idx += blockDim.x) {
    const int h = idx / (kQueryPad * kHeadDim);
    const int g = idx / kHeadDim % kQueryPad;
    const int d = idx % kHeadDim;
    q_s[(h * kQueryPad + g) * (kHeadDim + kQueryRowPad) + d] =
        g < kGroup ? p.q[b * p.q_row_stride +
                         ((static_cast<int64_t>(kv_head0) + h) * kGroup + g) * kHeadDim + d]
                   : 0;
  }
  if (!p.stream_u) {
    for (int h = 0; h < kHeads; ++h) {
      for (int kt = 0; kt < rank_tiles; ++kt) issue_u(h, kt, h * rank_tiles + kt, tid, blockDim.x);
    }
  }
  issue_tile(0, resolve_row(0));
  CpAsyncCommit();
  if (buffers == 2) issue_tile(1, resolve_row(1));
  CpAsyncCommit();
  internal::SalsRow next_row = resolve_row(buffers);  // the next tile to issue
  CpAsyncWait<1>();  // U and the first tile (with one buffer the second group is empty)
  FenceProxyAsync();
  __syncthreads();

  // This thread's RoPE frequencies: dims 8j + 2 quad + e, j < kHalf.
  float inv_freq[kHalf][2];
#pragma unroll
  for (int j = 0; j < kHalf; ++j) {
#pragma unroll
    for (int e = 0; e < 2; ++e) inv_freq[j][e] = __ldg(p.inv_freq + 8 * j + 2 * quad + e);
  }

  // ---- Per warp: online-softmax state of each head for the query pair (2 quad, 2 quad + 1).
  float m_run[kHeads][2];
  float l_run[kHeads][2];
  float o_acc[kHeads][kKSteps][4];  // O^T: dims 16 i + lane / 4 (+ 8), queries 2 quad (+ 1)
#pragma unroll
  for (int h = 0; h < kHeads; ++h) {
#pragma unroll
    for (int x = 0; x < 2; ++x) {
      m_run[h][x] = -INFINITY;
      l_run[h][x] = 0.0f;
    }
#pragma unroll
    for (int i = 0; i < kKSteps; ++i) {
#pragma unroll
      for (int e = 0; e < 4; ++e) o_acc[h][i][e] = 0.0f;
    }
  }

  uint8_t* vs = smem + lay.vs + warp * kWarpRows * lay.v_stride;
  int u_issued = 0;  // stream_u: k-tile stages issued for the current tile

  for (int k = 0; t_begin + wg + k * num_wgs < t_end; ++k) {
    const int off = buffer_offset(k);
    if (k > 0) {
      if (buffers == 2) {
        CpAsyncWait<1>();
      } else {
        CpAsyncWait<0>();
      }
      FenceProxyAsync();
      WarpgroupSync(wg);
    }
    const uint8_t* meta = smem + off + lay.meta;
    const int64_t* row_src = reinterpret_cast<const int64_t*>(meta);
    const int32_t* row_pos = reinterpret_cast<const int32_t*>(meta + 8 * kTileRows);
    const int32_t* row_kind = reinterpret_cast<const int32_t*>(meta + 12 * kTileRows);
    const int rows[2] = {wwarp * kWarpRows + lane / 4, wwarp * kWarpRows + lane / 4 + 8};
    int kinds[2];
#pragma unroll
    for (int i = 0; i < 2; ++i) kinds[i] = row_kind[rows[i]];
    const uint32_t a_tile = smem_base + off + lay.a;

    if (p.stream_u) {  // one head: its U k-tiles for this tile, kUStreamSlots ahead
      u_issued = 0;
      for (; u_issued < min(kUStreamSlots, rank_tiles); ++u_issued) {
        issue_u(0, u_issued, u_issued % kUStreamSlots, wtid, kWgThreads);
        CpAsyncCommit();
      }
    }

    float row_pos_f[2];
#pragma unroll
    for (int i = 0; i < 2; ++i) row_pos_f[i] = static_cast<float>(row_pos[rows[i]]);

#pragma unroll
    for (int h = 0; h < kHeads; ++h) {
      const int kvh = kv_head0 + h;
      float acc[kBlocks][4];
#pragma unroll
      for (int j = 0; j < kBlocks; ++j) {
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[j][e] = 0.0f;
      }
      // Rebuild K_h for the tile's rows.
      if (p.stream_u) {
        for (int kt = 0; kt < rank_tiles; ++kt) {
          CpAsyncWaitAtMost(u_issued - kt - 1);
          FenceProxyAsync();
          WarpgroupSync(wg);
          const uint32_t b_tile = smem_base + lay.u + (kt % kUStreamSlots) * (kHeadDim * 128);
          const uint32_t a_kt = a_tile + kt * (kTileRows * 128);
          if constexpr (kWgmma) {
            FenceAccumulators(acc);
            WgmmaFence();
#pragma unroll
            for (int kk = 0; kk < kKTile / 16; ++kk) {
              if constexpr (kHeadDim == 128) {
                WgmmaM64N128(acc, SmemDescriptor(a_kt + kk * 32), SmemDescriptor(b_tile + kk * 32));
              } else {
                WgmmaM64N64(acc, SmemDescriptor(a_kt + kk * 32), SmemDescriptor(b_tile + kk * 32));
              }
            }
            WgmmaCommit();
            WgmmaWaitAll();
            FenceAccumulators(acc);
          } else {
            const uint8_t* a_ptr = smem + (a_kt - smem_base);
            const uint8_t* b_ptr = smem + (b_tile - smem_base);
#pragma unroll
            for (int kk = 0; kk < kKTile / 16; ++kk) {
              uint32_t af[4];
              const int ar = wwarp * kWarpRows + (lane & 7) + ((lane >> 3) & 1) * 8;
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
          WarpgroupSync(wg);  // every warp is done with the slot
          if (u_issued < rank_tiles) {
            issue_u(0, u_issued, u_issued % kUStreamSlots, wtid, kWgThreads);
            CpAsyncCommit();
            ++u_issued;
          }
        }
      } else {
        const uint32_t b_head = smem_base + lay.u + h * rank_tiles * (kHeadDim * 128);
        if constexpr (kWgmma) {
          FenceAccumulators(acc);
          WgmmaFence();
          for (int kt = 0; kt < rank_tiles; ++kt) {
            const uint32_t a_kt = a_tile + kt * (kTileRows * 128);
            const uint32_t b_kt = b_head + kt * (kHeadDim * 128);
#pragma unroll
            for (int kk = 0; kk < kKTile / 16; ++kk) {
              if constexpr (kHeadDim == 128) {
                WgmmaM64N128(acc, SmemDescriptor(a_kt + kk * 32), SmemDescriptor(b_kt + kk * 32));
              } else {
                WgmmaM64N64(acc, SmemDescriptor(a_kt + kk * 32), SmemDescriptor(b_kt + kk * 32));
              }
            }
          }
          WgmmaCommit();
        } else {
          const uint8_t* b_ptr0 = smem + (b_head - smem_base);
          for (int kt = 0; kt < rank_tiles; ++kt) {
            const uint8_t* a_ptr = smem + (a_tile - smem_base) + kt * (kTileRows * 128);
            const uint8_t* b_ptr = b_ptr0 + kt * (kHeadDim * 128);
#pragma unroll
            for (int kk = 0; kk < kKTile / 16; ++kk) {
              uint32_t af[4];
              const int ar = wwarp * kWarpRows + (lane & 7) + ((lane >> 3) & 1) * 8;
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
      }

      // This warp's 16 rows of head h's values into its f16 tile (overlaps the async wgmma):
      // lane l takes row l % 16 and half l / 16 of the dims.
      {
        const int vr = lane % kWarpRows;
        const int d0 = (lane / kWarpRows) * (kHeadDim / 2);
        const int tr = wwarp * kWarpRows + vr;
        const int kind = row_kind[tr];
        uint4* dst = reinterpret_cast<uint4*>(vs + vr * lay.v_stride + d0 * 2);
        constexpr int kChunks = kHeadDim / 16;  // 8-value chunks of the half row
        if (kind == kLatent) {
          const uint8_t* vrow = smem + off + lay.vals + (tr * kHeads + h) * p.v_row_bytes;
          if (c.value_bits == 16) {
#pragma unroll
            for (int x = 0; x < kChunks; ++x)
              dst[x] = reinterpret_cast<const uint4*>(vrow + d0 * 2)[x];
          } else {
            const __half2* pairs = reinterpret_cast<const __half2*>(vrow + p.v_code_bytes);
            // Several groups per head only where the group size is a power of two below it.
            auto scale_zero = [&](int d) {
              return p.v_pairs > 1 ? pairs[d >> p.v_group_shift] : pairs[0];
            };
            if (c.value_bits == 4) {
#pragma unroll
              for (int x = 0; x < kChunks; ++x) {
                const int d = d0 + 8 * x;
                const __half2 sz = scale_zero(d);
                const uint32_t w = *reinterpret_cast<const uint32_t*>(vrow + d / 2);
                dst[x] = Dequant4Bit(w, __low2half2(sz), __high2half2(sz));
              }
            } else {
              // The half row's codes in one load: 16 dims a word.
              uint32_t words[kHeadDim / 32];
              if constexpr (kHeadDim == 128) {
                const uint4 w4 = *reinterpret_cast<const uint4*>(vrow + d0 / 4);
                words[0] = w4.x;
                words[1] = w4.y;
                words[2] = w4.z;
                words[3] = w4.w;
              } else {
                const uint2 w2 = *reinterpret_cast<const uint2*>(vrow + d0 / 4);
                words[0] = w2.x;
                words[1] = w2.y;
              }
              const bool one_pair = p.v_pairs == 1 || p.v_group_shift >= 4;  // d, d + 8 alike
#pragma unroll
              for (int x = 0; x < kChunks; x += 2) {
                const int d = d0 + 8 * x;
                const __half2 lo = scale_zero(d);
                const __half2 hi = one_pair ? lo : scale_zero(d + 8);
                const uint32_t w = words[x / 2];
                uint4 first, second;  // whole 16-byte stores
                Dequant2Bit(w, __lows2half2(lo, hi), __highs2half2(lo, hi), &first, &second);
                dst[x] = first;
                dst[x + 1] = second;
              }
            }
          }
        } else if (kind == kExact) {
          const uint4* src = reinterpret_cast<const uint4*>(
              c.exact_v + row_src[tr] * width + static_cast<int64_t>(kvh) * kHeadDim + d0);
#pragma unroll
          for (int x = 0; x < kChunks; ++x) dst[x] = src[x];
        } else if (kind == kNew) {
          const uint16_t* src =
              p.v_new + b * p.kv_row_stride + static_cast<int64_t>(kvh) * kHeadDim + d0;
#pragma unroll
          for (int x = 0; x < kChunks; ++x) {
            uint32_t w[4];
#pragma unroll
            for (int e = 0; e < 4; ++e) {
              const float lo = internal::SalsBits16ToFloat(src[8 * x + 2 * e], p.bf16);
              const float hi = internal::SalsBits16ToFloat(src[8 * x + 2 * e + 1], p.bf16);
              w[e] = internal::PackHalf2(lo, hi);
            }
            dst[x] = make_uint4(w[0], w[1], w[2], w[3]);
          }
        } else {
#pragma unroll
          for (int x = 0; x < kChunks; ++x) dst[x] = make_uint4(0, 0, 0, 0);
        }
      }

      if constexpr (kWgmma) {
        if (!p.stream_u) {
          WgmmaWaitAll();
          FenceAccumulators(acc);
        }
      }

      // Keys: latent rows rotate at their positions; exact rows and the new token load theirs.
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        const int r = rows[i];
        if (kinds[i] == kLatent) {  // dims 8j + 2 quad + e and + head_dim / 2, j < kHalf
#pragma unroll
          for (int j = 0; j < kHalf; ++j) {
#pragma unroll
            for (int e = 0; e < 2; ++e) {
              float sn, cs;
              RopeSinCos(__fmul_rn(row_pos_f[i], inv_freq[j][e]), &sn, &cs);
              const float x1 = acc[j][2 * i + e];
              const float x2 = acc[j + kHalf][2 * i + e];
              acc[j][2 * i + e] = x1 * cs - x2 * sn;
              acc[j + kHalf][2 * i + e] = x2 * cs + x1 * sn;
            }
          }
        } else if (kinds[i] == kExact) {
          const __half* kr = c.exact_k + row_src[r] * width + static_cast<int64_t>(kvh) * kHeadDim;
#pragma unroll
          for (int j = 0; j < kBlocks; ++j) {
            const float2 f =
                __half22float2(*reinterpret_cast<const __half2*>(kr + 8 * j + 2 * quad));
            acc[j][2 * i] = f.x;
            acc[j][2 * i + 1] = f.y;
          }
        } else if (kinds[i] == kNew) {
          const uint16_t* kr = p.k_new + b * p.kv_row_stride + static_cast<int64_t>(kvh) * kHeadDim;
#pragma unroll
          for (int j = 0; j < kBlocks; ++j) {
            acc[j][2 * i] = internal::SalsBits16ToFloat(kr[8 * j + 2 * quad], p.bf16);
            acc[j][2 * i + 1] = internal::SalsBits16ToFloat(kr[8 * j + 2 * quad + 1], p.bf16);
          }
        } else {
#pragma unroll
          for (int j = 0; j < kBlocks; ++j) acc[j][2 * i] = acc[j][2 * i + 1] = 0.0f;
        }
      }

      // Scores S^T = K Q^T: rows of the warp x the padded group, in log2 units.
      float s[4] = {0.0f, 0.0f, 0.0f, 0.0f};
      float s_odd[4] = {0.0f, 0.0f, 0.0f, 0.0f};  // a second chain: half the mma latency
      const uint32_t* qh = reinterpret_cast<const uint32_t*>(q_s + (h * kQueryPad + lane / 4) *
                                                                       (kHeadDim + kQueryRowPad)) +
                           quad;
#pragma unroll
      for (int kk = 0; kk < kKSteps; ++kk) {
        const uint32_t b0 = qh[8 * kk];
        const uint32_t b1 = qh[8 * kk + 4];
        uint32_t a[4];
        if (p.bf16) {  // bf16 queries: keys in two bf16 parts (8 bits alone lose too much)
          uint32_t r[4];
          SplitBF162(acc[2 * kk][0], acc[2 * kk][1], &a[0], &r[0]);
          SplitBF162(acc[2 * kk][2], acc[2 * kk][3], &a[1], &r[1]);
          SplitBF162(acc[2 * kk + 1][0], acc[2 * kk + 1][1], &a[2], &r[2]);
          SplitBF162(acc[2 * kk + 1][2], acc[2 * kk + 1][3], &a[3], &r[3]);
          MmaBF16(kk % 2 == 0 ? s : s_odd, a, b0, b1);
          MmaBF16(kk % 2 == 0 ? s_odd : s, r, b0, b1);
        } else {
          a[0] = internal::PackHalf2(acc[2 * kk][0], acc[2 * kk][1]);
          a[1] = internal::PackHalf2(acc[2 * kk][2], acc[2 * kk][3]);
          a[2] = internal::PackHalf2(acc[2 * kk + 1][0], acc[2 * kk + 1][1]);
          a[3] = internal::PackHalf2(acc[2 * kk + 1][2], acc[2 * kk + 1][3]);
          MmaF16(kk % 2 == 0 ? s : s_odd, a, b0, b1);
        }
      }
#pragma unroll
      for (int x = 0; x < 4; ++x) s[x] += s_odd[x];
#pragma unroll
      for (int i = 0; i < 2; ++i) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          s[2 * i + e] = kinds[i] != kInvalid ? s[2 * i + e] * p.scale_log2 : -INFINITY;
        }
      }

      // Online softmax of the warp's rows, one rescale per tile.
      float pr[4];
#pragma unroll
      for (int x = 0; x < 2; ++x) {
        float mx = fmaxf(s[x], s[2 + x]);
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 4));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 8));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 16));
        const float m_new = fmaxf(m_run[h][x], mx);
        const float m_use = m_new == -INFINITY ? 0.0f : m_new;
        const float alpha = exp2f(m_run[h][x] - m_use);
        m_run[h][x] = m_new;
        pr[x] = exp2f(s[x] - m_use);
        pr[2 + x] = exp2f(s[2 + x] - m_use);
        l_run[h][x] = l_run[h][x] * alpha + pr[x] + pr[2 + x];
#pragma unroll
        for (int i = 0; i < kKSteps; ++i) {
          o_acc[h][i][x] *= alpha;
          o_acc[h][i][2 + x] *= alpha;
        }
      }

      // O^T += V^T P: P^T's 8x8 fragments transposed into the B operand.
      __syncwarp();  // the warp's value tile is written
      const uint32_t pb0 = Transpose8x8(internal::PackHalf2(pr[0], pr[1]));
      const uint32_t pb1 = Transpose8x8(internal::PackHalf2(pr[2], pr[3]));
      const int vrow = (lane & 7) + ((lane >> 4) << 3);
      const int vcol = ((lane >> 3) & 1) * 8;
#pragma unroll
      for (int i = 0; i < kKSteps; ++i) {
        uint32_t a[4];
        LdMatrixX4<true>(
            a, reinterpret_cast<const __half*>(vs + vrow * lay.v_stride + (16 * i + vcol) * 2));
        MmaF16(o_acc[h][i], a, pb0, pb1);
      }
      __syncwarp();  // before the next head's values overwrite the tile
    }

    WarpgroupSync(wg);  // the buffer is free for the warpgroup's next-but-one tile
    issue_tile(k + buffers, next_row);
    CpAsyncCommit();
    next_row = resolve_row(k + buffers + 1);
  }

  // ---- Merge the warps' states per (head, query) and write this split's result.
  CpAsyncWait<0>();
  __syncthreads();
  const int group = kGroup;
  const int num_warps = num_wgs * 4;
  float* merge_ml = reinterpret_cast<float*>(smem);            // [warp][head][g][2]
  float* merge_o = merge_ml + num_warps * kHeads * group * 2;  // [warp][head][g][head_dim]
#pragma unroll
  for (int h = 0; h < kHeads; ++h) {
#pragma unroll
    for (int x = 0; x < 2; ++x) {
      float l = l_run[h][x];
      l += __shfl_xor_sync(0xffffffffu, l, 4);
      l += __shfl_xor_sync(0xffffffffu, l, 8);
      l += __shfl_xor_sync(0xffffffffu, l, 16);
      const int g = 2 * quad + x;
      if (g < group) {
        if (lane < 4) {
          merge_ml[((warp * kHeads + h) * group + g) * 2] = m_run[h][x];
          merge_ml[((warp * kHeads + h) * group + g) * 2 + 1] = l;
        }
        float* o = merge_o + ((warp * kHeads + h) * group + g) * kHeadDim;
#pragma unroll
        for (int i = 0; i < kKSteps; ++i) {
          o[16 * i + lane / 4] = o_acc[h][i][x];
          o[16 * i + lane / 4 + 8] = o_acc[h][i][2 + x];
        }
      }
    }
  }
  __syncthreads();
  for (int idx = tid; idx < kHeads * group * kHeadDim; idx += blockDim.x) {
    const int hg = idx / kHeadDim;  // head * group + g
    const int d = idx % kHeadDim;
    float mx = -INFINITY;
    for (int w = 0; w < num_warps; ++w) mx = fmaxf(mx, merge_ml[(w * kHeads * group + hg) * 2]);
    const float ref = mx == -INFINITY ? 0.0f : mx;
    float sum = 0.0f;
    float value = 0.0f;
    for (int w = 0; w < num_warps; ++w) {
      const float wt = exp2f(merge_ml[(w * kHeads * group + hg) * 2] - ref);
      sum = fmaf(wt, merge_ml[(w * kHeads * group + hg) * 2 + 1], sum);
      value = fmaf(wt, merge_o[(w * kHeads * group + hg) * kHeadDim + d], value);
    }
    const int head = kv_head0 * kGroup + hg;
    const bool empty = !(sum > 0.0f);  // only invalid selections (garbage in `selected`)
    const float o = empty ? 0.0f : value / sum;
    if (p.max_splits == 1) {
      const int64_t at = (static_cast<int64_t>(b) * p.num_heads + head) * kHeadDim + d;
      if (p.bf16) {
        p.out[at] = __bfloat16_as_ushort(__float2bfloat16_rn(o));
      } else {
        p.out[at] = __half_as_ushort(__float2half_rn(o));
      }
    } else {
      const int64_t part = (static_cast<int64_t>(b) * p.max_splits + split) * p.num_heads + head;
      p.partial_o[part * kHeadDim + d] = o;
      if (d == 0) p.partial_lse[part] = empty ? -INFINITY : mx + log2f(sum);
    }
  }
}

// One block per (sequence, head): weights each split by exp2(lse - max lse) and normalizes.
template <typename T>
__global__ void __launch_bounds__(kCombineThreads)
    CombineKernel(const int32_t* __restrict__ kv_lens, SalsSelectionPolicy policy, int max_cached,
                  int split_rows, const float* __restrict__ partial_o,
                  const float* __restrict__ partial_lse, int max_splits, int num_heads,
                  int head_dim, T* __restrict__ out) {
  const int b = blockIdx.x / num_heads;
  const int head = blockIdx.x % num_heads;
  const int cached = min(kv_lens[b], max_cached);
  const SalsSelection sel = SalsPlanSelection(policy, cached);
  const int splits = min(max_splits, (sel.attended(cached) + split_rows - 1) / split_rows);
  auto part = [&](int t) { return (static_cast<int64_t>(b) * max_splits + t) * num_heads + head; };
  float mx = -INFINITY;
  for (int t = 0; t < splits; ++t) mx = fmaxf(mx, partial_lse[part(t)]);
  const float ref = mx == -INFINITY ? 0.0f : mx;
  for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
    float sum = 0.0f;
    float value = 0.0f;
    for (int t = 0; t < splits; ++t) {
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

// Calls f.template operator()<kHeadDim, kGroup, kHeads, kWgmma>() for the plan's shapes: the
// one place where they become template parameters (ValidateDecode refused everything else).
template <typename F>
absl::Status DispatchSparse(int head_dim, int group, int heads, bool wgmma, F&& f) {
  auto with_heads = [&]<int kHeadDim, int kGroup>() -> absl::Status {
    auto with_mma = [&]<int kHeads>() -> absl::Status {
      return wgmma ? f.template operator()<kHeadDim, kGroup, kHeads, true>()
                   : f.template operator()<kHeadDim, kGroup, kHeads, false>();
    };
    return heads == 2 ? with_mma.template operator()<2>() : with_mma.template operator()<1>();
  };
  auto with_group = [&]<int kHeadDim>() -> absl::Status {
    switch (group) {
      case 1:
        return with_heads.template operator()<kHeadDim, 1>();
      case 2:
        return with_heads.template operator()<kHeadDim, 2>();
      case 4:
        return with_heads.template operator()<kHeadDim, 4>();
      default:
        return with_heads.template operator()<kHeadDim, 8>();
    }
  };
  return head_dim == 128 ? with_group.template operator()<128>()
                         : with_group.template operator()<64>();
}

absl::Status ValidateDecode(const char* what, const SalsKvCache& c, const SalsSelectionPolicy& p,
                            int num_heads) {
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
  if (p.rank > kMaxRank || c.rank % 8 != 0) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": rank ", p.rank, " (stored ", c.rank,
                                                   ") must be at most ", kMaxRank,
                                                   " and the stored rank a multiple of 8"));
  }
  const int gs = c.value_group_size;
  if (c.value_bits != 16 && (gs % 8 != 0 || (c.head_dim % gs != 0 && gs % c.head_dim != 0))) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, ": value_group_size ", gs, " must be a multiple of 8 that divides head_dim ",
        c.head_dim, " or is a multiple of it"));
  }
  return absl::OkStatus();
}

SmemLayout LayoutFor(const SalsKvCache& cache, const SalsSelectionPolicy& policy, int group,
                     const SalsDecodePlan& plan) {
  return MakeSmemLayout(cache.head_dim, policy.rank, plan.heads_per_block, plan.warpgroups,
                        plan.buffers, plan.stream_u, ValueRowBytes(cache), group);
}

}  // namespace

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
                                              int num_heads, int max_cached, bool allow_wgmma) {
  SALS_KERNELS_RETURN_IF_ERROR(ValidateDecode("PlanSalsDecode", cache, policy, num_heads));
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
  // A sequence's top-k minus its middle never grows with its length (one more token adds at most
  // one to the top-k and exactly one to the middle): if the longest keeps its whole middle, all do.
  plan.attend_all = sel.topk >= sel.middle();

  // The first layout that fits, in order of preference: two heads (each latent row read half as
  // often, cos/sin shared), two warpgroups (while one waits, the other computes), two buffers (a
  // tile loads while the last one computes); else U streamed per tile. (Three warpgroups of one
  // head spill registers at 168 a thread.)
  struct Shape {
    int heads, warpgroups, buffers;
    bool stream_u;
  };
  const Shape shapes[] = {{2, 2, 2, false}, {1, 2, 2, false}, {2, 2, 1, false}, {1, 2, 1, false},
                          {2, 1, 2, false}, {1, 1, 2, false}, {1, 1, 1, false}, {1, 1, 1, true}};
  bool found = false;
  for (const Shape& s : shapes) {
    if (cache.num_kv_heads % s.heads != 0) continue;
    plan.heads_per_block = s.heads;
    plan.warpgroups = s.warpgroups;
    plan.buffers = s.buffers;
    plan.stream_u = s.stream_u;
    if (LayoutFor(cache, policy, group, plan).bytes <= max_smem) {
      found = true;
      break;
    }
  }
  if (!found) {
    return absl::InvalidArgumentError(absl::StrCat(
        "PlanSalsDecode: rank ", policy.rank, " with ", cache.value_bits,
        "-bit values needs more shared memory than the device's ", max_smem, " bytes"));
  }
  // Splits: about one block per multiprocessor over the batch's (sequence, head group) pairs.
  const int tiles =
      static_cast<int>(std::max<int64_t>(1, CeilDiv(sel.attended(max_cached), kTileRows)));
  const int64_t pairs = std::max<int64_t>(
      1, static_cast<int64_t>(batch) * (cache.num_kv_heads / plan.heads_per_block));
  const int splits = static_cast<int>(std::clamp<int64_t>(num_sms / pairs, 1, tiles));
  plan.tiles_per_split = static_cast<int>(CeilDiv(tiles, splits));
  plan.max_splits = static_cast<int>(CeilDiv(tiles, plan.tiles_per_split));
  return plan;
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
  const size_t parts = plan.max_splits > 1 ? batch * plan.max_splits * plan.num_heads : 0;
  w.partial_o = take(parts * cache.head_dim * sizeof(float));
  w.partial_lse = take(parts * sizeof(float));
  w.bytes = off;
  return w;
}

absl::Status SalsSparseAttention(DType dtype, const SalsKvCache& cache,
                                 const SalsSelectionPolicy& policy, const SalsDecodePlan& plan,
                                 const void* q, int64_t q_row_stride, const void* k_new,
                                 const void* v_new, int64_t kv_row_stride, const float* inv_freq,
                                 float scale, const int32_t* selected, void* workspace, void* out,
                                 cudaStream_t stream) {
  SALS_KERNELS_RETURN_IF_ERROR(
      ValidateDecode("SalsSparseAttention", cache, policy, plan.num_heads));
  if (dtype != DType::kF16 && dtype != DType::kBF16) {
    return absl::InvalidArgumentError(
        absl::StrCat("SalsSparseAttention: unsupported activation dtype ", DTypeName(dtype)));
  }
  const SalsSelection longest = SalsPlanSelection(policy, std::max(0, plan.max_cached));
  const int64_t tiles = CeilDiv(longest.attended(plan.max_cached), kTileRows);
  const bool shape_ok =
      (plan.heads_per_block == 1 || plan.heads_per_block == 2) &&
      cache.num_kv_heads % plan.heads_per_block == 0 && plan.warpgroups >= 1 &&
      plan.warpgroups <= kMaxWarpgroups && (plan.buffers == 1 || plan.buffers == 2) &&
      (!plan.stream_u || (plan.heads_per_block == 1 && plan.warpgroups == 1 && plan.buffers == 1));
  if (!shape_ok || plan.max_cached < 0 || plan.max_topk < longest.topk ||
      plan.tiles_per_split < 1 || plan.max_splits < 1 ||
      static_cast<int64_t>(plan.max_splits) * plan.tiles_per_split < tiles ||
      (plan.wgmma && !SalsWgmmaAvailable()) || workspace == nullptr ||
      (selected == nullptr && !plan.attend_all) || inv_freq == nullptr) {
    return absl::InvalidArgumentError("SalsSparseAttention: bad plan or null pointer");
  }
  if (q_row_stride < static_cast<int64_t>(plan.num_heads) * cache.head_dim ||
      kv_row_stride < cache.width()) {
    return absl::InvalidArgumentError("SalsSparseAttention: row stride shorter than a row");
  }
  if (plan.batch == 0) return absl::OkStatus();
  const SalsWorkspaceLayout ws = SalsDecodeWorkspace(cache, plan);
  const int group = plan.num_heads / cache.num_kv_heads;
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
  p.out = static_cast<uint16_t*>(out);
  p.max_cached = plan.max_cached;
  p.max_splits = plan.max_splits;
  p.tiles_per_split = plan.tiles_per_split;
  p.num_heads = plan.num_heads;
  p.rank_tiles = static_cast<int>(CeilDiv(policy.rank, kKTile));
  p.buffers = plan.buffers;
  p.stream_u = plan.stream_u;
  p.v_code_bytes = cache.head_dim * cache.value_bits / 8;
  p.v_pairs = cache.value_bits == 16 ? 0 : std::max(1, cache.head_dim / cache.value_group_size);
  p.v_row_bytes = ValueRowBytes(cache);
  p.v_group_shift = std::countr_zero(static_cast<unsigned>(cache.value_group_size));
  p.bf16 = dtype == DType::kBF16;
  p.smem = LayoutFor(cache, policy, group, plan);
  SALS_KERNELS_RETURN_IF_ERROR(
      DispatchSparse(cache.head_dim, group, plan.heads_per_block, plan.wgmma,
                     [&]<int kHeadDim, int kGroup, int kHeads, bool kWgmma>() -> absl::Status {
                       auto kernel = SparseAttentionKernel<kHeadDim, kGroup, kHeads, kWgmma>;
                       SALS_CUDA_RETURN_IF_ERROR(cudaFuncSetAttribute(
                           kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, p.smem.bytes));
                       const dim3 grid(plan.max_splits, plan.batch, cache.num_kv_heads / kHeads);
                       kernel<<<grid, plan.warpgroups * kWgThreads, p.smem.bytes, stream>>>(p);
                       return LastLaunchStatus("SparseAttentionKernel");
                     }));
  if (plan.max_splits == 1) return absl::OkStatus();
  return internal::DispatchActivation(dtype, "SalsSparseAttention", [&]<typename T>(T) {
    CombineKernel<T><<<plan.batch * plan.num_heads, kCombineThreads, 0, stream>>>(
        cache.kv_lens, policy, plan.max_cached, plan.tiles_per_split * kTileRows, p.partial_o,
        p.partial_lse, plan.max_splits, plan.num_heads, cache.head_dim, static_cast<T*>(out));
    return LastLaunchStatus("CombineKernel");
  });
}

absl::Status SalsDecodeAttention(DType dtype, const SalsKvCache& cache,
                                 const SalsSelectionPolicy& policy, const SalsDecodePlan& plan,
                                 const void* q_pre, const void* q, int64_t q_row_stride,
                                 const void* k_new, const void* v_new, int64_t kv_row_stride,
                                 const float* inv_freq, float scale, void* workspace, void* out,
                                 cudaStream_t stream) {
  if (workspace == nullptr) {
    return absl::InvalidArgumentError("SalsDecodeAttention: null workspace");
  }
  if (plan.attend_all) {
    return SalsSparseAttention(dtype, cache, policy, plan, q, q_row_stride, k_new, v_new,
                               kv_row_stride, inv_freq, scale, nullptr, workspace, out, stream);
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
                             kv_row_stride, inv_freq, scale, selected, workspace, out, stream);
}

}  // namespace sals::kernels
