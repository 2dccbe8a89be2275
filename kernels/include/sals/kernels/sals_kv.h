// The SALS KV storage of one sparse layer as the kernels see it, the selection policy a decode step
// applies to it, and the launchers that store new tokens. The format is the CPU reference's
// (engine/backend/cpu/cpu_kv_store.h, engine/kv/value_quant.h) with fp16 in place of fp32:
//   - per token slot s = block * block_size + slot (the dense pool's paging): the latent key
//     U^T k_pre (`rank` fp16 values, pre-RoPE) and the value row of D = num_kv_heads * head_dim
//     values, group-quantized: codes of value_bits bits packed low bits first (D * bits / 8
//     bytes), one (scale, zero) fp16 pair per group of value_group_size values; value_bits 16
//     stores the fp16 values themselves in the code bytes and no pairs;
//   - per sequence slot e: exact post-RoPE keys and values of the sink tokens (row e * (sinks +
//     recent) + pos) and a ring of the most recent tokens (row e * (sinks + recent) + sinks +
//     pos % recent), fp16 [D] each;
//   - the basis U of the layer, [D x basis_stride] fp16 row-major (element (i, j) at
//     i * basis_stride + j); the first `rank` columns are used.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <cmath>
#include <cstdint>

#include "absl/status/status.h"
#include "sals/kernels/dtype.h"

namespace sals::kernels {

// Non-owning, passed by value. Pointers are device pointers; the writers fill latent,
// value_codes, value_scale_zero, exact_k and exact_v, the decode kernels only read.
struct SalsKvCache {
  __half* latent = nullptr;             // [slots x rank]
  uint8_t* value_codes = nullptr;       // [slots x D * value_bits / 8]
  __half2* value_scale_zero = nullptr;  // [slots x D / value_group_size] (.x scale, .y zero)
  __half* exact_k = nullptr;            // [sequence slots x (sink + recent) x D]
  __half* exact_v = nullptr;
  const __half* basis = nullptr;  // U
  int64_t basis_stride = 0;
  // Sequence b has kv_lens[b] tokens cached before the step (the new token not among them),
  // token j in block block_tables[b * block_table_stride + j / block_size], and its exact rows
  // in sequence slot exact_slots[b]; its ring rows hold exact copies only of positions >=
  // exact_valid_from[b] (tokens restored from the prefix cache have latents only; null: 0),
  // as SequenceSlice::exact_valid_from.
  const int32_t* block_tables = nullptr;
  int64_t block_table_stride = 0;
  const int32_t* kv_lens = nullptr;
  const int32_t* exact_slots = nullptr;
  const int32_t* exact_valid_from = nullptr;
  int block_size = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  int rank = 0;  // latent values stored per token
  int value_bits = 4;
  int value_group_size = 32;
  int sink_tokens = 16;    // exact sink rows per sequence slot
  int recent_tokens = 64;  // exact ring rows per sequence slot

  __host__ __device__ int width() const { return num_kv_heads * head_dim; }
  __host__ __device__ int64_t code_bytes() const {
    return static_cast<int64_t>(width()) * value_bits / 8;
  }
  __host__ __device__ int groups() const {
    return value_bits == 16 ? 0 : width() / value_group_size;
  }
  __host__ __device__ int exact_rows() const { return sink_tokens + recent_tokens; }
};

// Row of the exact store that keeps token `pos` of the sequence in slot `exact_slot`: the sink
// row while pos < sinks, else the ring row pos % recent (valid while pos is among the last
// `recent` cached tokens).
inline int64_t SalsExactRow(const SalsKvCache& cache, int exact_slot, int64_t pos) {
  const int64_t base = static_cast<int64_t>(exact_slot) * cache.exact_rows();
  return pos < cache.sink_tokens ? base + pos
                                 : base + cache.sink_tokens + pos % cache.recent_tokens;
}

// What one decode step attends to (engine/sals/policy.h, resolved: no zeros stand for defaults).
// One policy serves every sequence of a launch.
struct SalsSelectionPolicy {
  int rank = 0;        // latent dims the keys are rebuilt from, <= cache.rank
  int score_dims = 0;  // latent dims that score, in [1, rank]
  double topk_fraction = 0.125;
  int token_budget = 0;  // > 0: at most this many selected middle tokens
  bool select_all = false;
  int sink_tokens = 16;    // <= cache.sink_tokens
  int recent_tokens = 64;  // in [1, cache.recent_tokens], the new token included
};

// The step of a sequence with `cached` tokens (new token at position `cached`), as
// sals::PlanSelection(policy, cached): sinks [0, sink_end), middle candidates
// [sink_end, recent_begin) of which `topk` are selected, recent [recent_begin, cached].
struct SalsSelection {
  int sink_end = 0;
  int recent_begin = 0;
  int topk = 0;

  __host__ __device__ int middle() const { return recent_begin - sink_end; }
  // Tokens attended: the cached sinks (at most `cached`: sink_end may count the new token), the
  // selected and recent cached tokens, and the new token.
  __host__ __device__ int attended(int cached) const {
    return (sink_end < cached ? sink_end : cached) + topk +
           (cached - recent_begin > 0 ? cached - recent_begin : 0) + 1;
  }
};

__host__ __device__ inline SalsSelection SalsPlanSelection(const SalsSelectionPolicy& p,
                                                           int cached) {
  const int context = cached + 1;
  SalsSelection s;
  s.sink_end = p.sink_tokens < context ? p.sink_tokens : context;
  s.recent_begin = context - p.recent_tokens > s.sink_end ? context - p.recent_tokens : s.sink_end;
  const int middle = s.recent_begin - s.sink_end;
  int64_t k = middle;
  if (!p.select_all) {
    if (p.topk_fraction > 0.0) k = static_cast<int64_t>(ceil(p.topk_fraction * context));
    if (p.token_budget > 0 && k > p.token_budget) k = p.token_budget;
  }
  s.topk = static_cast<int>(k < 0 ? 0 : (k > middle ? middle : k));
  return s;
}

// Checks the cache's shapes and the policy against it (the decode launchers call this too).
absl::Status ValidateSalsKvCache(const SalsKvCache& cache);
absl::Status ValidateSalsPolicy(const SalsKvCache& cache, const SalsSelectionPolicy& policy);

// Stores the latent keys and quantized values of `num_tokens` new tokens: token t's pre-RoPE key
// k_pre + t * src_row_stride and value v + t * src_row_stride (D values each, f16 or bf16) go to
// flat slot slots[t]; slots[t] < 0 skips the token. latent = U^T k_pre is accumulated in fp32
// and rounded once to fp16. Values are first rounded to fp16 (exact for f16 input), then
// quantized with the reference's fp32 arithmetic operation by operation (no fused multiply-add),
// so codes, scales and zeros are bit-identical to sals::QuantizeValues of those fp16 values.
// Both may run before this step's attention: the new token is always in the recent window.
absl::Status SalsWriteLatentValues(DType src_dtype, const SalsKvCache& cache, const void* k_pre,
                                   const void* v, int64_t src_row_stride, int64_t num_tokens,
                                   const int64_t* slots, cudaStream_t stream);

// Copies post-RoPE keys and values (as above) to exact rows exact_rows[t] (SalsExactRow; < 0
// skips, e.g. prefill tokens that a later token of the chunk overwrites in the ring). Run it
// after the step's attention: the new token's ring row is the one of the token `recent`
// positions back, which that attention may still read.
absl::Status SalsWriteExact(DType src_dtype, const SalsKvCache& cache, const void* k_post,
                            const void* v, int64_t src_row_stride, int64_t num_tokens,
                            const int64_t* exact_rows, cudaStream_t stream);

}  // namespace sals::kernels
