#include "engine/backend/cuda/cuda_attention.h"

#include <cmath>

#include "sals/kernels/attention.h"
#include "sals/kernels/cuda_utils.h"
#include "sals/kernels/elementwise.h"
#include "sals/kernels/paged_kv.h"
#include "sals/kernels/sals_decode.h"
#include "sals/kernels/sals_kv.h"
#include "sals/kernels/sals_materialize.h"

namespace sals::cuda {
namespace {

namespace kn = ::sals::kernels;

float AttentionScale(const ModelConfig& c) {
  return 1.0f / std::sqrt(static_cast<float>(c.head_dim));
}

// A fallback SALS group's decode slices: stages 1-3 select, the selection is materialized into
// the scratch pool, the dense decode kernel attends over it.
absl::Status SalsFallbackDecode(const AttentionStep& step, const SalsGroupPlan& g,
                                const SalsGroupKernels& k, const kn::SalsKvCache& view,
                                const uint16_t* q_pre, uint16_t* q, uint16_t* out) {
  const ModelConfig& c = step.config;
  const int row = c.q_width() + 2 * c.kv_width();
  const cudaStream_t st = step.stream;
  const auto* mat_rows = step.views.at<int32_t>(step.plan.meta.mat_rows);
  const kn::SalsWorkspaceLayout ws = kn::SalsDecodeWorkspace(view, k.plan);
  auto* base = static_cast<uint8_t*>(step.sals_workspace);
  auto* q_latent = reinterpret_cast<float*>(base + ws.q_latent);
  auto* scores = reinterpret_cast<float*>(base + ws.scores);
  auto* selected = reinterpret_cast<int32_t*>(base + ws.selected);
  SALS_KERNELS_RETURN_IF_ERROR(
      kn::SalsLatentQuery(step.dtype, view, k.stage_policy, k.plan, q_pre, row,
                          reinterpret_cast<float*>(base + ws.q_partial), q_latent, st));
  SALS_KERNELS_RETURN_IF_ERROR(
      kn::SalsLatentScores(view, k.stage_policy, k.plan, q_latent, scores, st));
  SALS_KERNELS_RETURN_IF_ERROR(kn::SalsTopK(view, k.stage_policy, k.plan, scores, selected, st));
  SALS_KERNELS_RETURN_IF_ERROR(kn::SalsMaterializeSelection(
      view, k.policy, g.count, g.planned_cached, selected, k.plan.max_topk, mat_rows + g.begin,
      step.inv_freq, step.scratch_k, step.scratch_v, st));
  return kn::DecodeAttention(
      step.dtype, step.views.Scratch(step.scratch_k, step.scratch_v, g.begin), g.count, c.num_heads,
      q, row, AttentionScale(c), k.dense, step.decode_workspace, out, st);
}

}  // namespace

absl::Status DenseAttention(const AttentionStep& step, const LayerKv& kv, uint16_t* qkv,
                            uint16_t* attn) {
  const ModelConfig& c = step.config;
  const StepPlan& p = step.plan;
  const cudaStream_t st = step.stream;
  const int qw = c.q_width(), kvw = c.kv_width(), row = qw + 2 * kvw;
  const float scale = AttentionScale(c);
  const auto* slots = step.views.at<int64_t>(p.meta.slots);
  const auto* q_starts = step.views.at<int32_t>(p.meta.q_starts);
  SALS_KERNELS_RETURN_IF_ERROR(kn::WriteKvCache(step.dtype, qkv + qw, qkv + qw + kvw, row, p.tokens,
                                                c.num_kv_heads, c.head_dim, slots, kv.k, kv.v, st));
  if (p.decode_seqs > 0) {
    SALS_KERNELS_RETURN_IF_ERROR(
        kn::DecodeAttention(step.dtype, step.views.Paged(kv.k, kv.v, 0), p.decode_seqs, c.num_heads,
                            qkv, row, scale, step.kernels.decode, step.decode_workspace, attn, st));
  }
  if (p.prefill_seqs > 0) {
    const int64_t first = p.decode_seqs;  // decode slices hold one row each
    SALS_KERNELS_RETURN_IF_ERROR(kn::PrefillAttention(
        step.dtype, step.views.Paged(kv.k, kv.v, p.decode_seqs), p.prefill_seqs, c.num_heads,
        qkv + first * row, row, q_starts, p.max_q_len, scale, attn + first * qw, st));
  }
  return absl::OkStatus();
}

absl::Status SalsAttention(const AttentionStep& step, const LayerKv& kv, uint16_t* qkv,
                           uint16_t* attn) {
  const ModelConfig& c = step.config;
  const StepPlan& p = step.plan;
  const cudaStream_t st = step.stream;
  const kn::DType dt = step.dtype;
  const int qw = c.q_width(), kvw = c.kv_width(), row = qw + 2 * kvw;
  const float scale = AttentionScale(c);
  const auto* slots = step.views.at<int64_t>(p.meta.slots);
  const auto* positions = step.views.at<int32_t>(p.meta.positions);
  const auto* q_starts = step.views.at<int32_t>(p.meta.q_starts);
  const auto* mat_rows = step.views.at<int32_t>(p.meta.mat_rows);
  const auto* mat_ranks = step.views.at<int32_t>(p.meta.mat_ranks);
  const auto* exact_rows = step.views.at<int64_t>(p.meta.exact_rows);
  const auto* scratch_slots = step.views.at<int64_t>(p.meta.scratch_slots);
  const kn::SalsKvCache all = step.views.Sals(kv.sals, 0);
  const int64_t t = p.tokens;

  // Before RoPE: the decode rows' pre-RoPE query (for the latent query), then every new
  // token's latent key and quantized value (the attention below never reads them: decode
  // slices attend to the new token from its qkv row, prefill chunks to their cached context).
  if (p.decode_seqs > 0) {
    SALS_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(
        step.qkv_pre, qkv, static_cast<size_t>(p.decode_seqs) * row * sizeof(uint16_t),
        cudaMemcpyDeviceToDevice, st));
  }
  SALS_KERNELS_RETURN_IF_ERROR(
      kn::SalsWriteLatentValues(dt, all, qkv + qw, qkv + qw + kvw, row, t, slots, st));
  SALS_KERNELS_RETURN_IF_ERROR(kn::ApplyRopeQk(dt, qkv, t, row, c.num_heads, c.num_kv_heads,
                                               c.head_dim, positions, step.inv_freq, st));
  if (p.scratch_rows > 0) {
    SALS_KERNELS_RETURN_IF_ERROR(kn::WriteKvCache(dt, qkv + qw, qkv + qw + kvw, row, t,
                                                  c.num_kv_heads, c.head_dim, scratch_slots,
                                                  step.scratch_k, step.scratch_v, st));
  }
  for (size_t i = 0; i < p.groups.size(); ++i) {
    const SalsGroupPlan& g = p.groups[i];
    const SalsGroupKernels& k = step.kernels.groups[i];
    const kn::SalsKvCache view = step.views.Sals(kv.sals, g.begin);
    const uint16_t* q_pre = step.qkv_pre + static_cast<int64_t>(g.begin) * row;
    uint16_t* q = qkv + static_cast<int64_t>(g.begin) * row;
    uint16_t* out = attn + static_cast<int64_t>(g.begin) * qw;
    if (g.fast) {
      SALS_KERNELS_RETURN_IF_ERROR(
          kn::SalsDecodeAttention(dt, view, k.policy, k.plan, q_pre, q, row, q + qw, q + qw + kvw,
                                  row, step.inv_freq, scale, step.sals_workspace, out, st));
    } else {
      SALS_KERNELS_RETURN_IF_ERROR(SalsFallbackDecode(step, g, k, view, q_pre, q, out));
    }
  }
  if (p.prefill_seqs > 0) {
    const int first = p.decode_seqs;  // decode slices hold one row each
    if (p.max_context > 0) {
      SALS_KERNELS_RETURN_IF_ERROR(kn::SalsMaterializeContext(
          step.views.Sals(kv.sals, first), p.prefill_seqs, p.max_context, mat_ranks + first,
          mat_rows + first, step.inv_freq, step.scratch_k, step.scratch_v, st));
    }
    SALS_KERNELS_RETURN_IF_ERROR(
        kn::PrefillAttention(dt, step.views.Scratch(step.scratch_k, step.scratch_v, first),
                             p.prefill_seqs, c.num_heads, qkv + int64_t{first} * row, row, q_starts,
                             p.max_q_len, scale, attn + int64_t{first} * qw, st));
  }
  // After attention (which may still read the ring rows these overwrite).
  return kn::SalsWriteExact(dt, all, qkv + qw, qkv + qw + kvw, row, t, exact_rows, st);
}

}  // namespace sals::cuda
