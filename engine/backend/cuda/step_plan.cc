#include "engine/backend/cuda/step_plan.h"

#include <algorithm>
#include <bit>

#include "absl/strings/str_cat.h"
#include "engine/common/absl_compat.h"

namespace sals::cuda {
namespace {

bool SamePolicy(const SalsPolicy& a, const SalsPolicy& b) {
  return a.rank == b.rank && a.score_dims == b.score_dims && a.topk_fraction == b.topk_fraction &&
         a.token_budget == b.token_budget && a.select_all == b.select_all &&
         a.sink_tokens == b.sink_tokens && a.recent_tokens == b.recent_tokens &&
         a.selection == b.selection;
}

// The batch's one-token slices grouped by resolved SALS policy (one group without SALS), each in
// batch order, groups in order of first appearance.
struct DecodeGroups {
  std::vector<std::vector<int>> members;
  std::vector<SalsPolicy> policies;
};

DecodeGroups GroupDecodeSlices(const ForwardBatch& batch, const StepPlanOptions& options) {
  const bool sals = options.num_sparse_layers > 0;
  DecodeGroups out;
  for (int s = 0; s < static_cast<int>(batch.seqs.size()); ++s) {
    const SequenceSlice& seq = batch.seqs[s];
    if (seq.num_tokens != 1) continue;
    const SalsPolicy policy = sals ? seq.policy.Resolved(options.storage) : SalsPolicy{};
    size_t g = 0;
    while (g < out.policies.size() && !(sals && SamePolicy(out.policies[g], policy))) ++g;
    if (g == out.policies.size() && (sals || out.policies.empty())) {
      out.policies.push_back(policy);
      out.members.emplace_back();
    }
    out.members[sals ? g : 0].push_back(s);
  }
  return out;
}

// The SALS groups of the plan (shapes and statistics; not yet whether the fast path takes them).
void PlanSalsGroups(const ForwardBatch& batch, const StepPlanOptions& options,
                    const DecodeGroups& decode, StepPlan* p) {
  const int64_t sparse = options.num_sparse_layers;
  for (size_t g = 0, at = 0; g < decode.members.size(); ++g) {
    SalsGroupPlan group;
    group.begin = static_cast<int>(at);
    group.count = static_cast<int>(decode.members[g].size());
    group.policy = decode.policies[g];
    int max_cached = 0;
    for (int s : decode.members[g]) {
      const int cached = batch.seqs[s].context_len;
      max_cached = std::max(max_cached, cached);
      const SelectionPlan sel = PlanSelection(group.policy, cached);
      p->attended_tokens += (AttendedTokens(sel, cached) - 1) * sparse;
      p->cached_tokens += cached * sparse;
    }
    if (p->graph) group.count = p->decode_seqs;  // padding slices join the (only) group
    group.planned_cached = p->graph ? KvBucket(max_cached) : max_cached;
    at += decode.members[g].size();
    p->groups.push_back(group);
  }
}

// The scratch pool's rows: per fallback decode slice its attended tokens, per prefill chunk its
// context and new tokens, each rounded to whole scratch blocks; the groups know their path.
void PlanScratch(const ForwardBatch& batch, StepPlan* p) {
  int64_t blocks = 1;
  for (const SalsGroupPlan& g : p->groups) {
    if (!g.fast) blocks = std::max(blocks, CeilDiv(g.max_rows, kScratchBlock));
  }
  for (int i = p->decode_seqs; i < p->decode_seqs + p->prefill_seqs; ++i) {
    const SequenceSlice& seq = batch.seqs[p->order[i]];
    blocks = std::max(blocks, CeilDiv(seq.context_len + seq.num_tokens, kScratchBlock));
  }
  int64_t rows = 0;
  for (const SalsGroupPlan& g : p->groups) {
    for (int i = g.begin; i < g.begin + g.count; ++i) {
      p->scratch_begin[i] = rows;
      if (g.fast) continue;
      const bool live = i < p->batch_decode;  // else graph padding
      const int cached = live ? batch.seqs[p->order[i]].context_len : 0;
      p->scratch_len[i] = live ? AttendedTokens(PlanSelection(g.policy, cached), cached) : 0;
      rows += RoundUp(p->graph ? g.max_rows : p->scratch_len[i], kScratchBlock);
    }
  }
  for (int i = p->decode_seqs; i < p->decode_seqs + p->prefill_seqs; ++i) {
    const SequenceSlice& seq = batch.seqs[p->order[i]];
    p->scratch_begin[i] = rows;
    p->scratch_len[i] = seq.context_len + seq.num_tokens;
    rows += RoundUp(p->scratch_len[i], kScratchBlock);
  }
  p->scratch_rows = rows;
  p->scratch_stride = blocks;
}

template <typename T>
T* At(std::span<uint8_t> meta, size_t offset) {
  return reinterpret_cast<T*>(meta.data() + offset);
}

// The SALS part of the metadata. Device index d < order.size() is batch sequence order[d], its
// first token row first_row[d]; the rest is graph padding.
void WriteSalsMeta(const ForwardBatch& batch, const StepPlan& q, const SalsStorage& storage,
                   const std::vector<int64_t>& first_row, std::span<uint8_t> meta) {
  const int64_t exact_rows = storage.sink_tokens + storage.recent_tokens;
  auto* cached = At<int32_t>(meta, q.meta.cached);
  auto* exact_slots = At<int32_t>(meta, q.meta.exact_slots);
  auto* exact_valid = At<int32_t>(meta, q.meta.exact_valid);
  auto* mat_rows = At<int32_t>(meta, q.meta.mat_rows);
  auto* mat_ranks = At<int32_t>(meta, q.meta.mat_ranks);
  auto* scratch_lens = At<int32_t>(meta, q.meta.scratch_lens);
  auto* scratch_tables = At<int32_t>(meta, q.meta.scratch_tables);
  auto* exact_row = At<int64_t>(meta, q.meta.exact_rows);
  auto* scratch_slot = At<int64_t>(meta, q.meta.scratch_slots);
  const int padded_seqs = q.decode_seqs + q.prefill_seqs;
  std::fill_n(exact_row, q.tokens, -1);
  std::fill_n(scratch_slot, q.tokens, -1);
  for (int d = 0; d < padded_seqs; ++d) {
    int32_t* table = scratch_tables + static_cast<int64_t>(d) * q.scratch_stride;
    for (int64_t b = 0; b < q.scratch_stride; ++b) {
      table[b] = static_cast<int32_t>(q.scratch_begin[d] / kScratchBlock + b);
    }
    mat_rows[d] = static_cast<int32_t>(q.scratch_begin[d]);
    scratch_lens[d] = static_cast<int32_t>(q.scratch_len[d]);
    if (d >= static_cast<int>(q.order.size())) {  // padding
      cached[d] = 0;
      exact_slots[d] = 0;
      exact_valid[d] = 0;
      mat_ranks[d] = 1;
      continue;
    }
    const SequenceSlice& seq = batch.seqs[q.order[d]];
    cached[d] = seq.context_len;
    exact_slots[d] = seq.exact_slot;
    exact_valid[d] = seq.exact_valid_from;
    mat_ranks[d] = seq.policy.Resolved(storage).rank;
    const int64_t t = first_row[d];
    const int64_t end = seq.context_len + seq.num_tokens;
    for (int j = 0; j < seq.num_tokens; ++j) {
      const int64_t pos = seq.context_len + j;
      // Sinks keep their row; other tokens pass through the recent ring, and only those still
      // in it at the end of the step are written (a later token of the chunk would overwrite
      // the others).
      if (pos < storage.sink_tokens) {
        exact_row[t + j] = seq.exact_slot * exact_rows + pos;
      } else if (pos >= end - storage.recent_tokens) {
        exact_row[t + j] =
            seq.exact_slot * exact_rows + storage.sink_tokens + pos % storage.recent_tokens;
      }
      if (q.scratch_len[d] > 0) {
        scratch_slot[t + j] = d < q.decode_seqs ? q.scratch_begin[d] + q.scratch_len[d] - 1
                                                : q.scratch_begin[d] + pos;
      }
    }
  }
}

}  // namespace

int GraphBatch(int n) {
  return n <= 8 ? static_cast<int>(std::bit_ceil(static_cast<unsigned>(n)))
                : static_cast<int>(RoundUp(n, 16));
}

int KvBucket(int len) {
  if (len <= 0) return 0;
  const int step = std::max(256, static_cast<int>(std::bit_floor(static_cast<unsigned>(len))) / 16);
  return static_cast<int>(RoundUp(len, step));
}

MetaLayout LayoutMeta(int64_t tokens, int64_t seqs, int64_t prefill_seqs, int64_t table_stride,
                      int64_t rows, bool sals, int64_t scratch_stride) {
  MetaLayout m;
  size_t at = 0;
  auto take = [&at](int64_t bytes) {
    const size_t offset = at;
    at = RoundUp(at + static_cast<size_t>(bytes), 16);
    return offset;
  };
  m.slots = take(tokens * 8);
  m.tokens = take(tokens * 4);
  m.positions = take(tokens * 4);
  m.kv_lens = take(seqs * 4);
  m.q_starts = take((prefill_seqs + 1) * 4);
  m.tables = take(seqs * table_stride * 4);
  m.rows = take(rows * 4);
  if (sals) {
    m.cached = take(seqs * 4);
    m.exact_slots = take(seqs * 4);
    m.exact_valid = take(seqs * 4);
    m.mat_rows = take(seqs * 4);
    m.mat_ranks = take(seqs * 4);
    m.scratch_lens = take(seqs * 4);
    m.scratch_tables = take(seqs * scratch_stride * 4);
    m.exact_rows = take(tokens * 8);
    m.scratch_slots = take(tokens * 8);
  }
  m.bytes = at;
  return m;
}

int64_t AttendedTokens(const SelectionPlan& selection, int64_t cached) {
  return std::min(selection.sink_end, cached) + selection.topk +
         std::max<int64_t>(cached - selection.recent_begin, 0) + 1;
}

absl::StatusOr<StepPlan> PlanStep(const ForwardBatch& batch, bool greedy,
                                  const StepPlanOptions& options, SalsFastPath fast_path) {
  const int num_seqs = static_cast<int>(batch.seqs.size());
  const int bs = options.block_size;
  const bool sals = options.num_sparse_layers > 0;
  int64_t max_blocks = 1;
  int max_decode_kv = 0;
  StepPlan p;
  for (const SequenceSlice& seq : batch.seqs) {
    if (sals && seq.policy.selection != SalsSelection::kShared) {
      return absl::UnimplementedError(
          absl::StrCat("the CUDA backend has no SALS selection '",
                       ToAbsl(SalsSelectionName(seq.policy.selection)),
                       "' (per KV head: the CPU reference only); use 'shared'"));
    }
    max_blocks = std::max<int64_t>(max_blocks, CeilDiv(seq.context_len + seq.num_tokens, bs));
    if (seq.num_tokens == 1) {
      max_decode_kv = std::max(max_decode_kv, seq.context_len + 1);
    } else {
      p.max_q_len = std::max(p.max_q_len, seq.num_tokens);
      p.max_context = std::max(p.max_context, seq.context_len);
    }
  }
  const DecodeGroups decode = GroupDecodeSlices(batch, options);
  for (const std::vector<int>& members : decode.members) {
    p.order.insert(p.order.end(), members.begin(), members.end());
  }
  p.batch_decode = static_cast<int>(p.order.size());
  for (int s = 0; s < num_seqs; ++s) {
    if (batch.seqs[s].num_tokens > 1) p.order.push_back(s);
  }
  p.row_begin.resize(num_seqs);
  for (int s = 0; s < num_seqs; ++s) {
    p.row_begin[s] = p.out_rows;
    p.out_rows += greedy || !batch.seqs[s].all_logits ? 1 : batch.seqs[s].num_tokens;
  }
  p.prefill_seqs = num_seqs - p.batch_decode;
  // Graphs bake each SALS group's policy in: one group only (the usual case).
  p.graph = options.cuda_graphs && p.prefill_seqs == 0 && p.batch_decode > 0 &&
            p.batch_decode <= options.max_graph_batch && (!sals || decode.members.size() == 1);
  if (p.graph) {
    p.decode_seqs = GraphBatch(p.batch_decode);
    p.tokens = p.rows = p.decode_seqs;
    p.table_stride = static_cast<int64_t>(std::bit_ceil(static_cast<uint64_t>(max_blocks)));
    p.planned_kv = KvBucket(max_decode_kv);
  } else {
    p.decode_seqs = p.batch_decode;
    p.tokens = static_cast<int64_t>(batch.tokens.size());
    p.rows = p.out_rows;
    p.table_stride = max_blocks;
    p.planned_kv = max_decode_kv;
  }
  const int padded_seqs = p.decode_seqs + p.prefill_seqs;
  p.scratch_begin.assign(padded_seqs, 0);
  p.scratch_len.assign(padded_seqs, 0);
  p.meta = LayoutMeta(p.tokens, padded_seqs, p.prefill_seqs, p.table_stride, p.rows, sals, 1);
  if (!sals) return p;

  PlanSalsGroups(batch, options, decode, &p);
  for (SalsGroupPlan& g : p.groups) {
    absl::StatusOr<bool> fast = fast_path(p, g);
    if (!fast.ok()) return fast.status();
    g.fast = *fast;
    if (!g.fast)
      g.max_rows = AttendedTokens(PlanSelection(g.policy, g.planned_cached), g.planned_cached);
  }
  PlanScratch(batch, &p);
  p.meta = LayoutMeta(p.tokens, padded_seqs, p.prefill_seqs, p.table_stride, p.rows, true,
                      p.scratch_stride);
  return p;
}

absl::Status WriteStepMeta(const ForwardBatch& batch, const StepPlan& q,
                           const StepPlanOptions& options, std::span<uint8_t> meta) {
  if (meta.size() < q.meta.bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("step metadata needs ", q.meta.bytes, " bytes, got ", meta.size()));
  }
  const int bs = options.block_size;
  auto* slots = At<int64_t>(meta, q.meta.slots);
  auto* tokens = At<int32_t>(meta, q.meta.tokens);
  auto* positions = At<int32_t>(meta, q.meta.positions);
  auto* kv_lens = At<int32_t>(meta, q.meta.kv_lens);
  auto* q_starts = At<int32_t>(meta, q.meta.q_starts);
  auto* tables = At<int32_t>(meta, q.meta.tables);
  auto* rows = At<int32_t>(meta, q.meta.rows);
  // Each batch sequence's first token in batch.tokens, and its first token row on the device.
  std::vector<int64_t> first_token(batch.seqs.size());
  for (size_t s = 0, t = 0; s < batch.seqs.size(); ++s) {
    first_token[s] = static_cast<int64_t>(t);
    t += batch.seqs[s].num_tokens;
  }
  std::vector<int64_t> device_row(batch.seqs.size());
  std::vector<int64_t> first_row(q.order.size());
  int64_t t = 0;
  q_starts[0] = 0;
  for (int i = 0; i < static_cast<int>(q.order.size()); ++i) {
    const SequenceSlice& seq = batch.seqs[q.order[i]];
    device_row[q.order[i]] = first_row[i] = t;
    for (int j = 0; j < seq.num_tokens; ++j, ++t) {
      const int pos = seq.context_len + j;
      tokens[t] = batch.tokens[first_token[q.order[i]] + j];
      positions[t] = pos;
      slots[t] = static_cast<int64_t>(seq.block_table[pos / bs]) * bs + pos % bs;
    }
    kv_lens[i] = seq.context_len + seq.num_tokens;
    const int64_t blocks = CeilDiv(seq.context_len + seq.num_tokens, bs);
    int32_t* table = tables + static_cast<int64_t>(i) * q.table_stride;
    std::copy_n(seq.block_table.begin(), blocks, table);
    std::fill(table + blocks, table + q.table_stride, 0);
    if (i >= q.batch_decode) {
      q_starts[i - q.batch_decode + 1] = q_starts[i - q.batch_decode] + seq.num_tokens;
    }
  }
  // Graph padding: empty contexts (the kernel gives zeros) whose K/V is not stored.
  for (int i = q.batch_decode; i < q.decode_seqs; ++i, ++t) {
    tokens[t] = 0;
    positions[t] = 0;
    slots[t] = -1;
    kv_lens[i] = 0;
    std::fill_n(tables + static_cast<int64_t>(i) * q.table_stride, q.table_stride, 0);
  }
  if (options.num_sparse_layers > 0) WriteSalsMeta(batch, q, options.storage, first_row, meta);
  // Logits rows: a sequence's last token, or every one of its tokens (plan.row_begin says).
  int r = 0;
  for (size_t s = 0; s < batch.seqs.size(); ++s) {
    const SequenceSlice& seq = batch.seqs[s];
    const int32_t end = s + 1 < batch.seqs.size() ? q.row_begin[s + 1] : q.out_rows;
    if (end - q.row_begin[s] == 1) {
      rows[r++] = static_cast<int32_t>(device_row[s] + seq.num_tokens - 1);
    } else {
      for (int j = 0; j < seq.num_tokens; ++j) rows[r++] = static_cast<int32_t>(device_row[s] + j);
    }
  }
  for (; r < q.rows; ++r) rows[r] = r;  // padding rows of a decode graph
  return absl::OkStatus();
}

std::vector<int64_t> GraphKey(const StepPlan& plan, std::span<const int64_t> kernel_fields) {
  std::vector<int64_t> key = {plan.tokens, plan.table_stride};
  for (const SalsGroupPlan& g : plan.groups) {
    const SalsPolicy& q = g.policy;
    key.insert(key.end(),
               {g.begin, g.count, q.rank, q.score_dims, std::bit_cast<int64_t>(q.topk_fraction),
                q.token_budget, q.select_all, q.sink_tokens, q.recent_tokens, g.planned_cached,
                g.fast, g.max_rows, plan.scratch_stride});
  }
  key.insert(key.end(), kernel_fields.begin(), kernel_fields.end());
  return key;
}

}  // namespace sals::cuda
