#include "engine/kv/kv_format.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"

namespace sals {
namespace {
constexpr int64_t kF16Bytes = 2;
constexpr std::string_view kFp8Suffix = "-fp8";
}  // namespace

absl::StatusOr<std::optional<KvDType>> ParseKvDType(std::string_view name) {
  if (name == "auto") return std::optional<KvDType>();
  if (name == "fp16") return std::optional<KvDType>(KvDType::kF16);
  if (name == "fp8" || name == "fp8_e4m3") return std::optional<KvDType>(KvDType::kFp8E4M3);
  return absl::InvalidArgumentError(absl::StrCat("unknown KV cache dtype '", std::string(name),
                                                 "' (known: auto, fp16, fp8, fp8_e4m3)"));
}

const char* KvDTypeName(KvDType t) { return t == KvDType::kF16 ? "fp16" : "fp8_e4m3"; }

int64_t KvRowBytes(KvDType t, int64_t n) {
  return t == KvDType::kF16 ? n * kF16Bytes : n + kF16Bytes;
}

int KvCacheFormat::NumSparseLayers() const {
  if (!sals) return 0;
  return static_cast<int>(std::count(dense_layer.begin(), dense_layer.end(), false));
}

absl::StatusOr<KvCacheFormat> MakeKvCacheFormat(const ModelConfig& config,
                                                std::string_view preset) {
  KvCacheFormat format;
  format.dense_layer.assign(config.num_layers, true);
  const int width = config.kv_width();
  const std::string_view full = preset;
  const bool fp8 = preset.ends_with(kFp8Suffix);
  if (fp8) preset.remove_suffix(kFp8Suffix.size());
  if (fp8) format.dense_dtype = KvDType::kFp8E4M3;
  if (preset != "dense") {
    int divisor = 0, bits = 0;
    if (preset == "sals-25") {
      divisor = 4;
      bits = 4;
    } else if (preset == "sals-12.5") {
      divisor = 8;
      bits = 2;
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("unknown KV cache preset '", std::string(full),
                       "' (known: dense, sals-25, sals-12.5, dense-fp8, sals-25-fp8, "
                       "sals-12.5-fp8)"));
    }
    SalsStorage s;
    s.rank = std::max(1, width / divisor);
    s.values = ValueQuantSpec{bits, std::min(32, width)};
    s.latent_dtype = format.dense_dtype;
    format.sals = s;
    for (int l = 0; l < config.num_layers; ++l) {
      format.dense_layer[l] = l < 2 || l == config.num_layers - 1;
    }
  }
  if (absl::Status st = ValidateKvCacheFormat(config, format); !st.ok()) return st;
  return format;
}

absl::Status ValidateKvCacheFormat(const ModelConfig& config, const KvCacheFormat& format) {
  if (static_cast<int>(format.dense_layer.size()) != config.num_layers) {
    return absl::InvalidArgumentError(absl::StrCat("dense_layers covers ",
                                                   format.dense_layer.size(), " layers, model has ",
                                                   config.num_layers));
  }
  if (!format.sals) return absl::OkStatus();
  if (config.sliding_window) {
    return absl::InvalidArgumentError("SALS storage does not support sliding-window attention");
  }
  const SalsStorage& s = *format.sals;
  if (s.rank < 1 || s.rank > config.kv_width()) {
    return absl::InvalidArgumentError(
        absl::StrCat("rank must be in [1, ", config.kv_width(), "], got ", s.rank));
  }
  if (s.sink_tokens < 0 || s.recent_tokens < 1) {
    return absl::InvalidArgumentError(absl::StrCat("sink_tokens must be >= 0 and recent_tokens ",
                                                   ">= 1, got ", s.sink_tokens, " and ",
                                                   s.recent_tokens));
  }
  return ValidateValueQuantSpec(s.values, config.kv_width());
}

absl::Status CheckCudaKvFormat(const KvCacheFormat& format) {
  if (!format.UsesFp8()) return absl::OkStatus();
  return absl::UnimplementedError(absl::StrCat(
      "kv_cache.dtype fp8_e4m3 (dense K/V ", KvDTypeName(format.dense_dtype), ", latent keys ",
      format.sals ? KvDTypeName(format.sals->latent_dtype) : "none",
      ") is implemented by the CPU backend only: the CUDA backend stores fp16; serve it with "
      "backend.type=cpu, or kv_cache.dtype=fp16 (formats without -fp8) on CUDA"));
}

KvBytes ComputeKvBytes(const ModelConfig& config, const KvCacheFormat& format, int block_size) {
  const int64_t width = config.kv_width();
  const int64_t dense_layer_bytes = 2 * width * kF16Bytes;  // K and V, fp16
  // K and V as stored: one row per KV head (its own scale in fp8).
  const int64_t stored_dense_layer_bytes =
      2 * config.num_kv_heads * KvRowBytes(format.dense_dtype, config.head_dim);
  KvBytes b;
  b.dense_fp16_per_token = dense_layer_bytes * config.num_layers;
  const int sparse = format.NumSparseLayers();
  b.per_token = stored_dense_layer_bytes * (config.num_layers - sparse);
  if (format.sals) {
    const SalsStorage& s = *format.sals;
    const int64_t groups = s.values.bits == 16 ? 0 : width / s.values.group_size;
    const int64_t sparse_layer_bytes = KvRowBytes(s.latent_dtype, s.rank) +
                                       static_cast<int64_t>(PackedCodeBytes(width, s.values.bits)) +
                                       2 * groups * kF16Bytes;  // scale + zero per group
    b.per_token += sparse_layer_bytes * sparse;
    // The exact copies stay fp16 whatever the dtype: they are what the other tokens approximate.
    b.exact_per_sequence =
        static_cast<int64_t>(s.sink_tokens + s.recent_tokens) * dense_layer_bytes * sparse;
  }
  b.block_size = block_size;
  b.per_block = b.per_token * block_size;
  return b;
}

int64_t KvBytes::ContextsThatFit(int64_t context, int64_t bytes) const {
  const int64_t blocks = (context + block_size - 1) / block_size;
  const int64_t per_sequence = blocks * per_block + exact_per_sequence;
  return per_sequence > 0 ? bytes / per_sequence : 0;
}

}  // namespace sals
