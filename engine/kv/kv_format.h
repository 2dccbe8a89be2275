// What the paged KV pool stores per layer, and what that costs in bytes. Dense layers keep K
// (post-RoPE) and V in fp16 or fp8 e4m3; SALS layers keep latent keys (rank values, pre-RoPE) in
// fp16 or fp8 e4m3 and group-quantized values, plus an exact fp16 copy of each sequence's sink and
// recent tokens.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/kv/value_quant.h"
#include "engine/model/config.h"

namespace sals {

// Element type of stored dense K/V or latent keys. kFp8E4M3: e4m3 codes with an fp16 scale per
// row (kv/fp8_quant.h): per token for a latent key, per token and KV head for dense K and V.
enum class KvDType { kF16, kFp8E4M3 };

// kv_cache.dtype values, as vLLM's kv_cache_dtype: "auto" (nullopt: the preset's own), "fp16",
// "fp8" or "fp8_e4m3". Anything else (fp8_e5m2 included) is an error listing these.
absl::StatusOr<std::optional<KvDType>> ParseKvDType(std::string_view name);
const char* KvDTypeName(KvDType t);

// Bytes of one stored row of n values: 2n for fp16, n codes + a 2-byte scale for fp8.
int64_t KvRowBytes(KvDType t, int64_t n);

struct SalsStorage {
  int rank = 0;  // latent dims stored per token and sparse layer (requests may use a prefix)
  KvDType latent_dtype = KvDType::kF16;
  ValueQuantSpec values;
  int sink_tokens = 16;    // first tokens of a sequence, kept exact
  int recent_tokens = 64;  // last tokens of a sequence, kept exact
};

struct KvCacheFormat {
  std::optional<SalsStorage> sals;      // absent: every layer dense
  std::vector<bool> dense_layer;        // per layer: dense K/V (always true without sals)
  KvDType dense_dtype = KvDType::kF16;  // K and V of the dense layers

  bool UsesFp8() const {
    return dense_dtype == KvDType::kFp8E4M3 || (sals && sals->latent_dtype == KvDType::kFp8E4M3);
  }

  bool IsDense(int layer) const { return !sals || dense_layer[layer]; }
  int NumSparseLayers() const;
};

// Named storage presets: "dense", "sals-25" (rank D/4, 4-bit values), "sals-12.5" (rank D/8,
// 2-bit values); group size 32 (or the value width when smaller), 16 sinks, 64 recent tokens,
// dense layers = the first two and the last. Each has an "-fp8" variant ("dense-fp8",
// "sals-25-fp8", "sals-12.5-fp8") storing dense K/V and latent keys in fp8 e4m3; the exact
// sink/recent copies and the quantized values are the same as without it.
absl::StatusOr<KvCacheFormat> MakeKvCacheFormat(const ModelConfig& config, std::string_view preset);

// Checks rank, value spec and dense-layer list against the model; messages name the field.
absl::Status ValidateKvCacheFormat(const ModelConfig& config, const KvCacheFormat& format);

// What the CUDA backend stores today: fp16 dense K/V and latents. An fp8 format is refused with
// an error naming it and kv_cache.dtype (the CPU reference implements it; the kernels do not yet).
absl::Status CheckCudaKvFormat(const KvCacheFormat& format);

struct KvBytes {
  int64_t per_token = 0;  // paged pool bytes per cached token, all layers
  int block_size = 16;
  int64_t per_block = 0;             // per_token * block_size
  int64_t exact_per_sequence = 0;    // sink + recent tokens' exact fp16 K/V, all sparse layers
  int64_t dense_fp16_per_token = 0;  // what an all-dense fp16 cache would cost per token

  // Average bytes per token of a sequence of `context` tokens, exact tokens included.
  double PerTokenAt(int64_t context) const {
    return static_cast<double>(per_token) +
           static_cast<double>(exact_per_sequence) / static_cast<double>(context);
  }
  // Sequences of `context` tokens that fit in `bytes` (whole blocks, exact copies included).
  int64_t ContextsThatFit(int64_t context, int64_t bytes) const;
  // Sequences of `context` tokens whose blocks fit in `blocks` blocks of a pool whose exact
  // copies are held apart (per sequence slot).
  int64_t ContextsInBlocks(int64_t context, int64_t blocks) const {
    return blocks / ((context + block_size - 1) / block_size);
  }
};

KvBytes ComputeKvBytes(const ModelConfig& config, const KvCacheFormat& format, int block_size);

}  // namespace sals
