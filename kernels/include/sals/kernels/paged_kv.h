// The paged fp16 KV cache as kernels see it: one pool per layer for K and one for V, element
// (block, slot, head, dim) at ((block * block_size + slot) * num_kv_heads + head) * head_dim + dim
// (the layout of cpu::PagedKvView).
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/status/status.h"
#include "sals/kernels/dtype.h"

namespace sals::kernels {

// Non-owning, passed by value to the attention kernels. Sequence b attends to its first
// kv_lens[b] cached tokens, token j living in block block_tables[b * block_table_stride +
// j / block_size] at slot j % block_size.
struct PagedKvCache {
  const __half* k = nullptr;
  const __half* v = nullptr;
  const int32_t* block_tables = nullptr;
  int64_t block_table_stride = 0;
  const int32_t* kv_lens = nullptr;
  int block_size = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
};

// Writes the new tokens' K (post-RoPE) and V rows into the pools: token t's num_kv_heads x
// head_dim values (k + t * src_row_stride, likewise v; f16 or bf16, converted to f16 with
// round-to-nearest) go to flat slot slots[t] = block * block_size + slot. slots[t] < 0 skips the
// token (padding). src_row_stride lets k and v point into a fused qkv buffer.
absl::Status WriteKvCache(DType src_dtype, const void* k, const void* v, int64_t src_row_stride,
                          int64_t num_tokens, int num_kv_heads, int head_dim, const int64_t* slots,
                          __half* k_pool, __half* v_pool, cudaStream_t stream);

// FP8 e4m3 K/V pools of a dense layer (kv_cache.dtype=fp8_e4m3): codes in the layout above (one
// byte per element) and one fp16 scale per (slot, KV head), at slot * num_kv_heads + head.
struct PagedKvCacheFp8Pools {
  uint8_t* k_codes = nullptr;
  uint8_t* v_codes = nullptr;
  __half* k_scales = nullptr;
  __half* v_scales = nullptr;
};

// WriteKvCache into fp8 pools: each KV head's row of a token is quantized as
// engine/kv/fp8_quant.h's QuantizeFp8Row does (bit for bit, tests/gpu/kv_fp8_test.cc). At most
// 32 KV heads (one warp each). Not used by the CUDA backend yet: it refuses fp8 formats
// (CheckCudaKvFormat) until decode and prefill attention read these pools.
absl::Status WriteKvCacheFp8(DType src_dtype, const void* k, const void* v, int64_t src_row_stride,
                             int64_t num_tokens, int num_kv_heads, int head_dim,
                             const int64_t* slots, const PagedKvCacheFp8Pools& pools,
                             cudaStream_t stream);

}  // namespace sals::kernels
