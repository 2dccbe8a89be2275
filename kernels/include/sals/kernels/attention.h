// Dense attention over the paged fp16 KV cache (paged_kv.h). Queries and outputs are f16 or bf16
// (`dtype`), scores and softmax are fp32. Supported: head_dim 12, 16, 32, 64, 128; query heads per
// KV head (GQA group) 1, 2, 4, 8; any block size. Anything else is refused with
// InvalidArgument at the one dispatch point.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "sals/kernels/dtype.h"
#include "sals/kernels/paged_kv.h"

namespace sals::kernels {

// How a decode step is split over the context (flash-decoding): sequence b's context is cut
// into pieces of tokens_per_split, one thread block per (piece, kv head, sequence); the last of
// num_splits pieces extends to the end of the context, so any plan is correct, a good one fast.
// Host metadata only: plan once per step, then launch (also inside a CUDA graph).
struct DecodeAttentionPlan {
  int num_splits = 1;
  int tokens_per_split = 1;
};

// Chooses the split for `batch` sequences whose longest context is max_kv_len tokens, filling
// the current device's multiprocessors in whole waves.
absl::StatusOr<DecodeAttentionPlan> PlanDecodeAttention(DType dtype, const PagedKvCache& cache,
                                                        int batch, int num_heads, int max_kv_len);

// Device workspace (bytes) the plan needs for partial results; 0 when num_splits == 1.
size_t DecodeAttentionWorkspaceBytes(const DecodeAttentionPlan& plan, int batch, int num_heads,
                                     int head_dim);

// One new query token per sequence: out[b, h] = softmax(scale * q[b, h] . K_b^T) V_b over the
// first kv_lens[b] tokens of the cache (the new token's K/V already written). q row b starts at
// q + b * q_row_stride and holds num_heads x head_dim values (q_row_stride lets q point into a
// fused qkv buffer); out is [batch, num_heads, head_dim] contiguous. Query head h reads KV head
// h / (num_heads / num_kv_heads). A context of 0 tokens gives zeros.
absl::Status DecodeAttention(DType dtype, const PagedKvCache& cache, int batch, int num_heads,
                             const void* q, int64_t q_row_stride, float scale,
                             const DecodeAttentionPlan& plan, void* workspace, void* out,
                             cudaStream_t stream);

// Causal attention of prefill chunks: sequence b's new tokens are q rows
// q_starts[b] .. q_starts[b+1]-1 (q_starts: batch + 1 ints on the device) and are the last
// q_len_b of its kv_lens[b] cached tokens (their K/V already written), so new token i sits at
// position kv_lens[b] - q_len_b + i and attends to positions 0..that. q rows as in
// DecodeAttention; out rows are num_heads x head_dim contiguous, one per q row. max_q_len bounds
// every q_len_b (it sizes the grid).
absl::Status PrefillAttention(DType dtype, const PagedKvCache& cache, int batch, int num_heads,
                              const void* q, int64_t q_row_stride, const int32_t* q_starts,
                              int max_q_len, float scale, void* out, cudaStream_t stream);

}  // namespace sals::kernels
