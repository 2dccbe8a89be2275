// Cached tokens of a SALS sparse layer (sals_kv.h) as dense fp16 rows, for the dense attention
// kernels (attention.h): what CpuKvStore::ReadSals returns, on the device. Token p of sequence b
// gets its post-RoPE key and its value: copied from the exact store where that holds p (p before
// cache.sink_tokens, or among the last cache.recent_tokens of the kv_lens[b] cached tokens and
// from exact_valid_from[b] on), else the key rebuilt from the first `rank` latent dims as
// U[:, :rank] k~ in fp32, rotated at position p (angle float(p) * inv_freq[i] in fp32, as
// ApplyRopeQk) and rounded once to fp16, and the value dequantized (code * scale + zero in fp32,
// unfused, as sals::DequantizeValues).
//
// Output rows are D = num_kv_heads * head_dim fp16 values, row r of k_out / v_out at r * D: the
// layout of a PagedKvCache whose block i holds rows i * block_size .. (i + 1) * block_size - 1.
// Two launchers fill them: the whole cached context of prefill chunks, or the tokens a decode step
// selected (the fallback for shapes SalsSparseAttention does not take).
//
// Supported: any even head_dim up to 128, any rank in [1, cache.rank], every value format of
// sals_kv.h. Anything else is refused with InvalidArgument.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/status/status.h"
#include "sals/kernels/sals_kv.h"

namespace sals::kernels {

// Sequence b (of `batch`): its cached tokens p = 0 .. min(cache.kv_lens[b], max_cached) - 1 go to
// rows dst_rows[b] + p, keys rebuilt from ranks[b] latent dims (1 <= ranks[b] <= cache.rank).
// dst_rows and ranks: `batch` ints on the device.
absl::Status SalsMaterializeContext(const SalsKvCache& cache, int batch, int max_cached,
                                    const int32_t* ranks, const int32_t* dst_rows,
                                    const float* inv_freq, __half* k_out, __half* v_out,
                                    cudaStream_t stream);

// Sequence b: the cached tokens a decode step under `policy` attends to, for
// sel = SalsPlanSelection(policy, cached), cached = min(cache.kv_lens[b], max_cached): the sinks
// 0 .. min(sel.sink_end, cached) - 1, the sel.topk positions selected[b * max_topk ..] (SalsTopK's
// layout), the recent tokens sel.recent_begin .. cached - 1, in that order, to rows dst_rows[b] +
// i for i < sel.attended(cached) - 1 (the new token is not among them); keys rebuilt from
// policy.rank latent dims (any rank in [1, cache.rank]: the policy need not satisfy
// ValidateSalsPolicy's multiple of 8). max_topk must bound sel.topk at max_cached.
absl::Status SalsMaterializeSelection(const SalsKvCache& cache, const SalsSelectionPolicy& policy,
                                      int batch, int max_cached, const int32_t* selected,
                                      int max_topk, const int32_t* dst_rows, const float* inv_freq,
                                      __half* k_out, __half* v_out, cudaStream_t stream);

}  // namespace sals::kernels
