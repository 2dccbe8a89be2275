// What the SALS decode attention kernel (sals_attention.cu) reads for each attended row, following
// CpuKvStore::ReadSals: the one definition of the row kinds.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "sals/kernels/sals_kv.h"

namespace sals::kernels::internal {

enum SalsRowKind : int32_t { kRowInvalid = 0, kRowLatent = 1, kRowExact = 2, kRowNew = 3 };

struct SalsRow {
  int32_t kind = kRowInvalid;
  int32_t pos = 0;
  int64_t src = 0;  // latent: flat token slot; exact: exact-store row; else 0
};

// Attended row e of sequence b: the selected tokens (selected[0, topk); null: the whole middle,
// when the policy keeps every middle token), then the cached sinks,
// the recent tokens and the new token. Tokens the exact store holds (before cache.sink_tokens,
// or among the last cache.recent_tokens and from exact_valid_from on) are read exactly, the
// others rebuilt from their latents, whichever range they are attended in.
__device__ __forceinline__ SalsRow ResolveSalsRow(const SalsKvCache& c, const SalsSelection& sel,
                                                  int b, int cached, int e, int n_sink,
                                                  int n_recent, const int32_t* selected,
                                                  int64_t max_topk) {
  SalsRow row;
  if (e < sel.topk) {  // no selection (every middle token kept): the middle in order
    row.pos = selected != nullptr ? selected[b * max_topk + e] : sel.sink_end + e;
  } else {
    const int f = e - sel.topk;
    row.pos = f < n_sink ? f : (f < n_sink + n_recent ? sel.recent_begin + f - n_sink : cached);
  }
  const int valid_from = c.exact_valid_from != nullptr ? c.exact_valid_from[b] : 0;
  if (row.pos == cached) {
    row.kind = kRowNew;
  } else if (row.pos < 0 || row.pos > cached) {
    row.kind = kRowInvalid;  // not a valid selection: attend to nothing rather than read anywhere
  } else if (row.pos < c.sink_tokens ||
             (row.pos >= cached - c.recent_tokens && row.pos >= valid_from)) {
    row.kind = kRowExact;
    row.src = static_cast<int64_t>(c.exact_slots[b]) * c.exact_rows() +
              (row.pos < c.sink_tokens ? row.pos : c.sink_tokens + row.pos % c.recent_tokens);
  } else {
    row.kind = kRowLatent;
    const int32_t block = c.block_tables[b * c.block_table_stride + row.pos / c.block_size];
    row.src = static_cast<int64_t>(block) * c.block_size + row.pos % c.block_size;
  }
  return row;
}

__device__ __forceinline__ float SalsBits16ToFloat(uint16_t bits, bool bf16) {
  return bf16 ? __bfloat162float(__ushort_as_bfloat16(bits)) : __half2float(__ushort_as_half(bits));
}

}  // namespace sals::kernels::internal
