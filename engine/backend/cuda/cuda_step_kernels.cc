#include "engine/backend/cuda/cuda_step_kernels.h"

#include <algorithm>
#include <bit>

#include "engine/backend/cuda/cuda_step_views.h"
#include "engine/kv/kv_format.h"

namespace sals::cuda {
namespace {

namespace kn = ::sals::kernels;

// A request's resolved policy in the kernels' terms.
kn::SalsSelectionPolicy KernelPolicy(const SalsPolicy& p) {
  kn::SalsSelectionPolicy k;
  k.rank = p.rank;
  k.score_dims = p.score_dims;
  k.topk_fraction = p.topk_fraction;
  k.token_budget = p.token_budget;
  k.select_all = p.select_all;
  k.sink_tokens = p.sink_tokens;
  k.recent_tokens = p.recent_tokens;
  return k;
}

}  // namespace

absl::Status StepKernelPlanner::CheckShapes(const uint8_t* meta) const {
  StepPlan one;
  one.table_stride = 1;
  const StepViews views(meta, one, config_, pool_.block_size);
  auto plan = kn::PlanDecodeAttention(dtype_, views.Paged(arena_.any(), arena_.any(), 0), 1,
                                      config_.num_heads, 1);
  return plan.ok() ? absl::OkStatus() : plan.status();
}

absl::StatusOr<bool> StepKernelPlanner::PlanSalsGroup(const StepPlan& step, const SalsGroupPlan& g,
                                                      const uint8_t* meta, StepKernels* out) const {
  const SalsStorage& storage = *pool_.format.sals;
  const StepViews views(meta, step, config_, pool_.block_size);
  const kn::SalsKvCache view = views.Sals(arena_.layer(arena_.first_sparse_layer()).sals, g.begin);
  SalsGroupKernels& k = out->groups.emplace_back();
  k.policy = KernelPolicy(g.policy);
  // The stored rank is padded to view.rank with zero basis columns: a policy of the whole
  // stored rank rebuilds identically from the padded one.
  kn::SalsSelectionPolicy kernel_policy = k.policy;
  if (kernel_policy.rank == storage.rank) kernel_policy.rank = view.rank;
  const int hd = config_.head_dim, gs = storage.values.group_size;
  const int group = config_.group_size();
  const bool shape_ok =
      (hd == 64 || hd == 128) && (group == 1 || group == 2 || group == 4 || group == 8) &&
      kernel_policy.rank % 8 == 0 &&
      (storage.values.bits == 16 || (gs % 8 == 0 && (hd % gs == 0 || gs % hd == 0)));
  if (shape_ok) {
    auto plan =
        kn::PlanSalsDecode(view, kernel_policy, g.count, config_.num_heads, g.planned_cached);
    if (plan.ok()) {
      k.policy = kernel_policy;
      k.plan = *plan;
      return true;
    }
  }
  // The fallback: its stages 1-3 select, then materialized rows and the dense decode kernel.
  k.stage_policy = k.policy;
  k.stage_policy.rank = view.rank;  // stages 1-3 only score (score_dims); any valid rank
  const kn::SalsSelection sel = kn::SalsPlanSelection(k.policy, g.planned_cached);
  kn::SalsDecodePlan plan;
  plan.batch = g.count;
  plan.num_heads = config_.num_heads;
  plan.max_cached = g.planned_cached;
  plan.max_middle = std::max(1, sel.middle());
  plan.max_topk = std::max(1, sel.topk);
  plan.score_stride = static_cast<int>(RoundUp(k.policy.score_dims, 8));
  plan.score_block_tokens = 64;
  plan.topk_cluster = kn::SalsTopKClusterFor(plan.max_middle);
  k.plan = plan;
  return false;
}

absl::Status StepKernelPlanner::Finish(const StepPlan& p, const uint8_t* meta,
                                       StepKernels* out) const {
  const StepViews views(meta, p, config_, pool_.block_size);
  if (p.decode_seqs > 0) {
    auto plan = kn::PlanDecodeAttention(dtype_, views.Paged(arena_.any(), arena_.any(), 0),
                                        p.decode_seqs, config_.num_heads, p.planned_kv);
    if (!plan.ok()) return plan.status();
    out->decode = *plan;
  }
  out->decode_workspace = kn::DecodeAttentionWorkspaceBytes(out->decode, p.decode_seqs,
                                                            config_.num_heads, config_.head_dim);
  for (size_t i = 0; i < p.groups.size(); ++i) {
    const SalsGroupPlan& g = p.groups[i];
    SalsGroupKernels& k = out->groups[i];
    const kn::SalsKvCache view =
        views.Sals(arena_.layer(arena_.first_sparse_layer()).sals, g.begin);
    out->sals_workspace =
        std::max(out->sals_workspace, kn::SalsDecodeWorkspace(view, k.plan).bytes);
    if (g.fast) continue;
    // Planned before the scratch pool is sized: any non-null pool pointer will do.
    auto dense = kn::PlanDecodeAttention(dtype_, views.Scratch(arena_.any(), arena_.any(), g.begin),
                                         g.count, config_.num_heads, g.max_rows);
    if (!dense.ok()) return dense.status();
    k.dense = *dense;
    out->decode_workspace = std::max(
        out->decode_workspace,
        kn::DecodeAttentionWorkspaceBytes(k.dense, g.count, config_.num_heads, config_.head_dim));
  }
  return absl::OkStatus();
}

std::vector<int64_t> KernelKey(const StepKernels& kernels) {
  std::vector<int64_t> key = {kernels.decode.num_splits, kernels.decode.tokens_per_split};
  for (const SalsGroupKernels& g : kernels.groups) {
    const kn::SalsSelectionPolicy& q = g.policy;
    const kn::SalsDecodePlan& s = g.plan;
    key.insert(key.end(), {q.rank,
                           q.score_dims,
                           std::bit_cast<int64_t>(q.topk_fraction),
                           q.token_budget,
                           q.select_all,
                           q.sink_tokens,
                           q.recent_tokens,
                           s.max_cached,
                           s.max_middle,
                           s.max_topk,
                           s.score_stride,
                           s.heads_per_block,
                           s.warpgroups,
                           s.buffers,
                           s.stream_u,
                           s.tiles_per_split,
                           s.max_splits,
                           s.wgmma,
                           s.score_block_tokens,
                           s.topk_cluster,
                           g.dense.num_splits,
                           g.dense.tokens_per_split});
  }
  return key;
}

}  // namespace sals::cuda
