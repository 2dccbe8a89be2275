// Host side of a CUDA backend step, with no CUDA dependency (it builds and is tested without
// nvcc): the device order of the batch's sequences, graph padding, the layout and contents of the
// per-step metadata, the SALS decode groups and the scratch-pool rows, and the key of a captured
// graph. What only the kernels can decide (whether the fused SALS decode kernels take a group:
// kernels/'s planner queries the device) comes in through a callback; the kernels' own plans
// (cuda_step_kernels.h) stay on the CUDA side.
//
// A step's sequences are reordered so that one-token slices come first (grouped by SALS policy
// in order of first appearance; one decode-attention launch per group and layer) and prefill
// chunks after (one prefill-attention launch); every other stage works on token rows and does
// not care about the order. Logit rows come back in the batch's own order.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/backend/backend.h"
#include "engine/kv/kv_format.h"
#include "engine/sals/policy.h"

namespace sals::cuda {

inline constexpr int kScratchBlock = 16;  // tokens per block of the SALS scratch pool

inline constexpr size_t RoundUp(size_t x, size_t m) { return (x + m - 1) / m * m; }
inline constexpr int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Padded batch of a graph-replayed decode step: powers of two up to 8, then multiples of 16.
int GraphBatch(int n);

// Context length a graph's attention split is planned for: sixteen steps per octave (a plan made
// for a longer context is correct, at most a sixteenth slower), so that a growing sequence gets a
// new graph only every sixteenth of a doubling.
int KvBucket(int len);

// Byte offsets of the per-step metadata inside one buffer (uploaded with one copy), each array
// 16-byte aligned. The SALS arrays are empty for dense pools.
struct MetaLayout {
  size_t slots = 0;      // int64 [tokens]: flat KV slot of each token (-1: padding)
  size_t tokens = 0;     // int32 [tokens]
  size_t positions = 0;  // int32 [tokens]
  size_t kv_lens = 0;    // int32 [seqs]: cached + new tokens
  size_t q_starts = 0;   // int32 [prefill seqs + 1]
  size_t tables = 0;     // int32 [seqs x table_stride]
  size_t rows = 0;       // int32 [rows]: token row of each logits row
  // SALS layers.
  size_t cached = 0;          // int32 [seqs]: tokens cached before the step
  size_t exact_slots = 0;     // int32 [seqs]
  size_t exact_valid = 0;     // int32 [seqs]: SequenceSlice::exact_valid_from
  size_t mat_rows = 0;        // int32 [seqs]: first scratch row of the sequence
  size_t mat_ranks = 0;       // int32 [seqs]: latent dims its keys are rebuilt from
  size_t scratch_lens = 0;    // int32 [seqs]: scratch rows the dense kernels attend to
  size_t scratch_tables = 0;  // int32 [seqs x scratch_stride]
  size_t exact_rows = 0;      // int64 [tokens]: exact-store row written after attention (-1: none)
  size_t scratch_slots = 0;   // int64 [tokens]: scratch row of the token's post-RoPE K/V (-1: none)
  size_t bytes = 0;
};

MetaLayout LayoutMeta(int64_t tokens, int64_t seqs, int64_t prefill_seqs, int64_t table_stride,
                      int64_t rows, bool sals, int64_t scratch_stride);

// Tokens a SALS decode step over `cached` tokens attends to: the cached sinks (sink_end may count
// the new token), the selected and recent cached tokens, and the new token (as the kernels'
// SalsSelection::attended).
int64_t AttendedTokens(const SelectionPlan& selection, int64_t cached);

// The backend's fixed facts that planning depends on.
struct StepPlanOptions {
  int block_size = 16;
  int num_sparse_layers = 0;  // > 0: the pool has SALS layers, stored as `storage` says
  SalsStorage storage;
  bool cuda_graphs = true;
  int max_graph_batch = 256;
};

// The decode slices of one SALS policy: a contiguous range of the device order.
struct SalsGroupPlan {
  int begin = 0;
  int count = 0;           // a graph step's only group also holds the padding slices
  SalsPolicy policy;       // resolved (its rank may be any prefix of the stored one)
  int planned_cached = 0;  // bounds every cached length of the group
  // Whether SalsDecodeAttention's kernels take the group (the callback says); else the fallback:
  // its stages 1-3 select, the selection is materialized into scratch rows, the dense decode
  // kernel attends.
  bool fast = false;
  int max_rows = 0;  // fallback: scratch rows of the longest sequence, the new token included
};

// One step as the device runs it (padded for graph steps).
struct StepPlan {
  int64_t tokens = 0;    // activation rows
  int decode_seqs = 0;   // one-token sequences, first in device order (graph padding included)
  int batch_decode = 0;  // the batch's one-token slices (decode_seqs - batch_decode: padding)
  int prefill_seqs = 0;  // after the decode ones
  int max_q_len = 0;     // longest prefill chunk
  int rows = 0;          // logits rows computed
  int out_rows = 0;      // logits rows returned (the first ones)
  int64_t table_stride = 0;
  int planned_kv = 0;  // context length the dense decode attention is planned for
  bool graph = false;  // a pure-decode step replayed from a captured CUDA graph
  MetaLayout meta;
  std::vector<int> order;          // device index -> batch index (graph padding not included)
  std::vector<int32_t> row_begin;  // per batch sequence, its first logits row
  // SALS layers.
  std::vector<SalsGroupPlan> groups;
  int max_context = 0;         // longest cached context among the prefill chunks
  int64_t scratch_stride = 1;  // scratch-table entries per sequence
  int64_t scratch_rows = 0;
  std::vector<int64_t> scratch_begin, scratch_len;  // per device index (padding included)
  // Selection statistics, summed over one-token slices and sparse layers (ForwardOutput's).
  int64_t attended_tokens = 0;
  int64_t cached_tokens = 0;
};

// Whether the fused SALS decode kernels take `group` of `plan` (planned up to the group list and
// the metadata offsets before the scratch tables); errors abort the step.
using SalsFastPath = absl::FunctionRef<absl::StatusOr<bool>(const StepPlan&, const SalsGroupPlan&)>;

// Plans a batch that ValidateForwardBatch accepted. `greedy`: one logits row per sequence (its
// last token's), whatever all_logits says. `fast_path` is called once per SALS group, in order.
absl::StatusOr<StepPlan> PlanStep(const ForwardBatch& batch, bool greedy,
                                  const StepPlanOptions& options, SalsFastPath fast_path);

// Writes the step's metadata, in device order, into `meta` (at least plan.meta.bytes bytes; the
// graph padding's entries included): what the device reads, uploaded with one copy.
absl::Status WriteStepMeta(const ForwardBatch& batch, const StepPlan& plan,
                           const StepPlanOptions& options, std::span<uint8_t> meta);

// Everything a captured decode step's launches depend on besides the metadata (uploaded to the
// same buffer every step) and the buffers (whose moves drop every graph): the plan's shapes and
// the kernels' own launch parameters (`kernel_fields`, cuda_step_kernels.h's KernelKey).
std::vector<int64_t> GraphKey(const StepPlan& plan, std::span<const int64_t> kernel_fields);

}  // namespace sals::cuda
