#include "engine/kv/kv_format.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"

namespace sals {
namespace {
constexpr int64_t kF16Bytes = 2;
}  // namespace

int KvCacheFormat::NumSparseLayers() const {
  if (!sals) return 0;
  return static_cast<int>(std::count(dense_layer.begin(), dense_layer.end(), false));
}

absl::StatusOr<KvCacheFormat> MakeKvCacheFormat(const ModelConfig& config,
                                                std::string_view preset) {
  KvCacheFormat format;
  format.dense_layer.assign(config.num_layers, true);
  const int width = config.kv_width();
  if (preset != "dense") {
    int divisor = 0, bits = 0;
    if (preset == "sals-25") {
      divisor = 4;
      bits = 4;
    } else if (preset == "sals-12.5") {
      divisor = 8;
      bits = 2;
    } else {
      return absl::InvalidArgumentError(absl::StrCat("unknown KV cache preset '",
                                                     std::string(preset),
                                                     "' (known: dense, sals-25, sals-12.5)"));
    }
    SalsStorage s;
    s.rank = std::max(1, width / divisor);
    s.values = ValueQuantSpec{bits, std::min(32, width)};
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

KvBytes ComputeKvBytes(const ModelConfig& config, const KvCacheFormat& format, int block_size) {
  const int64_t width = config.kv_width();
  const int64_t dense_layer_bytes = 2 * width * kF16Bytes;  // K and V
  KvBytes b;
  b.dense_fp16_per_token = dense_layer_bytes * config.num_layers;
  const int sparse = format.NumSparseLayers();
  b.per_token = dense_layer_bytes * (config.num_layers - sparse);
  if (format.sals) {
    const SalsStorage& s = *format.sals;
    const int64_t groups = s.values.bits == 16 ? 0 : width / s.values.group_size;
    const int64_t sparse_layer_bytes = s.rank * kF16Bytes +
                                       static_cast<int64_t>(PackedCodeBytes(width, s.values.bits)) +
                                       2 * groups * kF16Bytes;  // scale + zero per group
    b.per_token += sparse_layer_bytes * sparse;
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
