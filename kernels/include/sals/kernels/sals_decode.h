// The SALS decode step of one sparse layer (docs/SALS.md), one new token per sequence:
//   1. SalsLatentQuery: q~ = U[:, :score_dims]^T (query heads of each GQA group summed, pre-RoPE).
//   2. SalsLatentScores: score[m] = q~ . latent[:score_dims] of every middle token.
//   3. SalsTopK: the topk largest scores (radix select; ties go to the smaller position, as
//      sals::SelectTopK), as ascending positions.
//   4. SalsSparseAttention: one fused kernel per (sequence, group of KV heads, split of the
//      attended rows): the selected latent rows and packed values are gathered into shared
//      memory, keys rebuilt on tensor cores from the heads' slice of U held in shared memory,
//      rotated in registers at each row's position, scored against the GQA group's queries and
//      P V accumulated on tensor cores with one online-softmax rescale per 64-row tile; no rebuilt
//      key or dequantized value reaches global memory. Splits are merged by their log-sum-exp.
// SalsDecodeAttention runs all four. Semantics follow the CPU reference (cpu_backend.cc
// AttendSals) with one difference: a context shorter than the sink window attends to its cached
// tokens and the new token once each (the reference also reads the not yet written exact row of
// the new position). Tokens the exact store holds (before cache.sink_tokens, or among the last
// cache.recent_tokens and from exact_valid_from on) are read exactly, the others rebuilt, as
// CpuKvStore::ReadSals does, whichever range (sinks, selected, recent) they are attended in.
//
// Supported: head_dim 64 or 128; GQA group 1, 2, 4, 8; rank a multiple of 8 up to 1024;
// value_group_size a multiple of 8 that divides head_dim or is a multiple of it; activations
// (q, new k/v, out) f16 or bf16. Anything else is refused with InvalidArgument.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "sals/kernels/dtype.h"
#include "sals/kernels/sals_kv.h"

namespace sals::kernels {

// Host metadata of a step: sizes that bound every sequence of the batch, and the attention's
// tiling. Plan once per step (shapes only, no device data), then launch, also inside a CUDA graph.
struct SalsDecodePlan {
  int batch = 0;
  int num_heads = 0;
  int max_cached = 0;           // bounds every kv_lens[b]; longer contexts are cut to it
  int max_middle = 0;           // scores per sequence
  int max_topk = 0;             // selected positions per sequence
  int score_stride = 0;         // q~ row: score_dims rounded up to 8
  int score_block_tokens = 64;  // middle tokens per scoring block (the planner: 64 or 512)
  int topk_cluster = 1;         // blocks (a thread-block cluster) per sequence in the top-k
  // The attention kernel: a block serves heads_per_block KV heads (1 or 2) of one sequence and
  // tiles_per_split 64-row tiles of its attended rows, with `warpgroups` (1 or 2) warpgroups that
  // take the tiles in turn, each with `buffers` (1 or 2) tile buffers (2: the next tile loads
  // while this one computes). The heads' slice of U stays in shared memory for the whole block,
  // unless stream_u: then (one head, one warpgroup, one buffer) its 64-dim k-tiles stream through
  // a ring for every tile (ranks whose U does not fit). max_splits == 1 writes the output
  // directly, else per-split partial outputs that a combine kernel merges.
  int heads_per_block = 1;
  int warpgroups = 1;
  int buffers = 1;
  bool stream_u = false;
  int tiles_per_split = 1;
  int max_splits = 1;  // splits of the longest attended list
  bool wgmma = false;  // rebuild keys with wgmma (sm_90a build) instead of mma.sync
  // The policy keeps every middle token of every sequence (short contexts: the top-k covers the
  // middle; select_all): SalsDecodeAttention skips stages 1-3 and attends the whole context.
  bool attend_all = false;
};

// Plans a step of `batch` sequences of at most max_cached cached tokens. The rebuild uses wgmma
// when the kernels were built for sm_90a and `allow_wgmma`.
absl::StatusOr<SalsDecodePlan> PlanSalsDecode(const SalsKvCache& cache,
                                              const SalsSelectionPolicy& policy, int batch,
                                              int num_heads, int max_cached,
                                              bool allow_wgmma = true);

// Whether the wgmma path was compiled (kernels built for sm_90a).
bool SalsWgmmaAvailable();

// The step's device workspace: where each stage leaves its results (readable after the step, for
// tests and selection statistics). Offsets in bytes from the workspace start, 256-aligned.
struct SalsWorkspaceLayout {
  size_t q_partial = 0;    // f32, latent-query partial sums
  size_t q_latent = 0;     // f32 [batch x score_stride]
  size_t scores = 0;       // f32 [batch x max_middle]; entry m scores position sink_end + m
  size_t selected = 0;     // int32 [batch x max_topk], ascending positions, topk valid per sequence
  size_t partial_o = 0;    // f32 [batch x max_splits x num_heads x head_dim]
  size_t partial_lse = 0;  // f32 [batch x max_splits x num_heads]
  size_t bytes = 0;
};
SalsWorkspaceLayout SalsDecodeWorkspace(const SalsKvCache& cache, const SalsDecodePlan& plan);

// Stage 1. q_pre row b at q_pre + b * q_row_stride holds num_heads x head_dim pre-RoPE values;
// q_latent row b (plan.score_stride floats) gets U[:, :score_dims]^T of the group sums, zero
// padded. `partial` is the workspace's q_partial region.
absl::Status SalsLatentQuery(DType dtype, const SalsKvCache& cache,
                             const SalsSelectionPolicy& policy, const SalsDecodePlan& plan,
                             const void* q_pre, int64_t q_row_stride, float* partial,
                             float* q_latent, cudaStream_t stream);

// Stage 2: scores [batch x plan.max_middle] from q_latent (stage 1's layout).
absl::Status SalsLatentScores(const SalsKvCache& cache, const SalsSelectionPolicy& policy,
                              const SalsDecodePlan& plan, const float* q_latent, float* scores,
                              cudaStream_t stream);

// The top-k's blocks per sequence for this many middle tokens (what PlanSalsDecode sets).
int SalsTopKClusterFor(int max_middle);

// Stage 3: selected [batch x plan.max_topk] from scores (stage 2's layout). NaN ranks below
// every number (-inf included) and -0 as +0, as in sals::SelectTopK.
absl::Status SalsTopK(const SalsKvCache& cache, const SalsSelectionPolicy& policy,
                      const SalsDecodePlan& plan, const float* scores, int32_t* selected,
                      cudaStream_t stream);

// Stage 4. q row b (post-RoPE, num_heads x head_dim) at q + b * q_row_stride; the new token's
// post-RoPE key and value at k_new / v_new + b * kv_row_stride (D values each, not yet in the
// store); inv_freq: head_dim / 2 floats on the device (RoPE angle = float(pos) * inv_freq[i] in
// fp32, as ApplyRopeQk); selected: stage 3's layout (null with an attend_all plan: the whole
// middle). out: [batch x num_heads x head_dim].
absl::Status SalsSparseAttention(DType dtype, const SalsKvCache& cache,
                                 const SalsSelectionPolicy& policy, const SalsDecodePlan& plan,
                                 const void* q, int64_t q_row_stride, const void* k_new,
                                 const void* v_new, int64_t kv_row_stride, const float* inv_freq,
                                 float scale, const int32_t* selected, void* workspace, void* out,
                                 cudaStream_t stream);

// The whole step: stages 1-4 on `stream` with the workspace laid out by SalsDecodeWorkspace
// (stage 4 alone with an attend_all plan).
absl::Status SalsDecodeAttention(DType dtype, const SalsKvCache& cache,
                                 const SalsSelectionPolicy& policy, const SalsDecodePlan& plan,
                                 const void* q_pre, const void* q, int64_t q_row_stride,
                                 const void* k_new, const void* v_new, int64_t kv_row_stride,
                                 const float* inv_freq, float scale, void* workspace, void* out,
                                 cudaStream_t stream);

}  // namespace sals::kernels
