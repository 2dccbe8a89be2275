#include "engine/sals/dense_capture.h"

#include <algorithm>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "engine/backend/cpu/cpu_backend.h"

namespace sals {
namespace {
constexpr int kBlockSize = 16;
}  // namespace

absl::StatusOr<std::unique_ptr<DenseCapture>> DenseCapture::Create(const ModelConfig& config,
                                                                   const WeightSource& weights,
                                                                   int max_len, int chunk,
                                                                   ProjectionObserver observer) {
  if (max_len < 1 || max_len > config.max_position_embeddings) {
    return absl::InvalidArgumentError(absl::StrCat("sequence length must be in [1, ",
                                                   config.max_position_embeddings,
                                                   "] (max_position_embeddings), got ", max_len));
  }
  if (chunk < 1) {
    return absl::InvalidArgumentError(absl::StrCat("chunk must be positive, got ", chunk));
  }
  const int num_blocks = (max_len + kBlockSize - 1) / kBlockSize;
  CpuBackendOptions options;
  options.projection_observer = std::move(observer);
  KvPoolConfig pool;
  pool.num_blocks = num_blocks;
  pool.block_size = kBlockSize;
  auto backend = CreateCpuBackend(config, weights, pool, std::move(options));
  if (!backend.ok()) return backend.status();
  return std::unique_ptr<DenseCapture>(
      new DenseCapture(std::move(*backend), max_len, chunk, num_blocks));
}

DenseCapture::DenseCapture(std::unique_ptr<Backend> backend, int max_len, int chunk, int num_blocks)
    : backend_(std::move(backend)), max_len_(max_len), chunk_(chunk), block_table_(num_blocks) {
  std::iota(block_table_.begin(), block_table_.end(), 0);
}

absl::Status DenseCapture::Run(std::span<const int32_t> tokens) {
  const int64_t n = static_cast<int64_t>(tokens.size());
  if (n < 1 || n > max_len_) {
    return absl::InvalidArgumentError(
        absl::StrCat("sequence of ", n, " tokens, must be in [1, ", max_len_, "]"));
  }
  ForwardOutput out;
  for (int64_t begin = 0; begin < n; begin += chunk_) {
    const int64_t end = std::min(n, begin + chunk_);
    ForwardBatch batch;
    batch.tokens.assign(tokens.begin() + begin, tokens.begin() + end);
    SequenceSlice& seq = batch.seqs.emplace_back();
    seq.num_tokens = static_cast<int32_t>(end - begin);
    seq.context_len = static_cast<int32_t>(begin);
    seq.block_table = block_table_;
    if (absl::Status s = backend_->Forward(batch, &out); !s.ok()) return s;
  }
  return absl::OkStatus();
}

}  // namespace sals
