// The model-execution interface shared by the CPU reference and the CUDA backend. A backend owns
// the weights and the KV pool memory; which blocks a sequence uses is decided outside (block
// tables are plain integers).
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "engine/kv/kv_format.h"
#include "engine/model/config.h"
#include "engine/sals/policy.h"
#include "engine/sampling/sampler.h"

namespace sals {

struct KvPoolConfig {
  int num_blocks = 0;
  int block_size = 16;  // tokens per block
  // Sequences that can hold exact sink/recent tokens at once (SALS storage only).
  int max_sequences = 0;
  KvCacheFormat format;  // default: every layer dense
};

// One sequence's part of a step: a prefill chunk or a decode token, at arbitrary positions.
struct SequenceSlice {
  int32_t num_tokens = 0;   // new tokens this step
  int32_t context_len = 0;  // tokens already cached; the new ones sit at positions context_len..
  std::vector<int32_t> block_table;  // physical blocks covering context_len + num_tokens tokens
  bool all_logits = false;           // logits for every new token, else for the last one only
  int32_t exact_slot = -1;  // SALS storage: the sequence's slot for exact sink/recent tokens
  // SALS storage: positions below this (other than sinks) have no exact copy in the slot: they
  // came from the prefix cache, so only their latents exist.
  int32_t exact_valid_from = 0;
  SalsPolicy policy;  // SALS storage: what decode steps attend to
};

struct ForwardBatch {
  std::vector<int32_t> tokens;  // the new tokens of all sequences, sequence after sequence
  std::vector<SequenceSlice> seqs;
};

struct ForwardOutput {
  std::vector<float> logits;       // rows x vocab_size, fp32
  std::vector<int32_t> row_begin;  // per sequence, its first row in `logits`
  // SALS selection statistics of the step, summed over one-token slices and sparse layers:
  // cached tokens attended, and cached tokens there were.
  int64_t sals_attended_tokens = 0;
  int64_t sals_cached_tokens = 0;
};

struct DeviceMemory {
  int64_t used_bytes = 0;
  int64_t total_bytes = 0;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual const ModelConfig& config() const = 0;
  virtual const KvPoolConfig& kv_pool() const = 0;
  // Runs the model over the batch, writing each new token's K/V into its sequence's blocks,
  // and returns the requested logits. Errors on malformed batches (block table too short,
  // token id out of range, block id outside the pool) without touching the cache.
  virtual absl::Status Forward(const ForwardBatch& batch, ForwardOutput* out) = 0;
  // Forward, then one token for each sequence i with rows[i] != nullptr (rows.size() ==
  // batch.seqs.size()), drawn from the logits of its last new token as SampleRow(*rows[i]) does:
  // (*results)[i] (left default for the others). `out` gets the step's statistics; its logits
  // are unspecified. The CPU reference samples on the host; the CUDA backend on the device, so
  // that no logits cross to the host.
  virtual absl::Status ForwardSample(const ForwardBatch& batch,
                                     std::span<const RowSampling* const> rows,
                                     std::vector<SampleResult>* results, ForwardOutput* out) = 0;
  // Accelerator memory, for backends that have one.
  virtual std::optional<DeviceMemory> device_memory() const { return std::nullopt; }
};

}  // namespace sals
