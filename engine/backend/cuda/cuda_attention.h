// A layer's attention within a step's launches, from its fused q|k|v rows (one per token, in
// device order: decode slices first, then prefill chunks) to its attention output rows.
//
// A dense layer stores the new tokens' post-RoPE K/V in the paged pool, then runs the decode and
// prefill kernels over it.
//
// A SALS layer stores the new tokens' latents and quantized values before RoPE
// (SalsWriteLatentValues takes the pre-RoPE keys straight from the qkv rows); the decode rows'
// q|k|v are copied first, since the latent query is pre-RoPE. Decode slices attend through
// SalsDecodeAttention where its kernels take the shape (head_dim 64/128, rank a multiple of 8),
// else through a fallback of the same semantics: its stages 1-3 select, SalsMaterializeSelection
// writes the attended keys and values as dense fp16 rows into a scratch pool and the dense decode
// kernel attends. Prefill chunks attend densely to their cached context and themselves, as the
// CPU reference does: SalsMaterializeContext rebuilds the context (exact rows where the slot holds
// them) into the scratch pool, the chunk's own post-RoPE K/V join it, and the dense prefill
// kernel runs over it. After attention, sinks and the tokens that end in the recent ring get
// exact copies.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/status/status.h"
#include "engine/backend/cuda/cuda_kv_arena.h"
#include "engine/backend/cuda/cuda_step_kernels.h"
#include "engine/backend/cuda/cuda_step_views.h"
#include "engine/backend/cuda/step_plan.h"
#include "engine/model/config.h"
#include "sals/kernels/dtype.h"

namespace sals::cuda {

// What a layer's attention reads and writes besides its rows: the step's plans and metadata, and
// the per-step device buffers (sized for the plans).
struct AttentionStep {
  const ModelConfig& config;
  kernels::DType dtype;
  cudaStream_t stream;
  const StepPlan& plan;
  const StepKernels& kernels;
  const StepViews& views;
  const float* inv_freq;   // RoPE
  void* decode_workspace;  // StepKernels::decode_workspace bytes
  void* sals_workspace;    // StepKernels::sals_workspace bytes
  uint16_t* qkv_pre;       // SALS: the decode rows' q|k|v before RoPE
  __half* scratch_k;       // SALS: materialized rows + new tokens' K/V
  __half* scratch_v;
};

// qkv: post-RoPE; attn: [tokens x q_width].
absl::Status DenseAttention(const AttentionStep& step, const LayerKv& kv, uint16_t* qkv,
                            uint16_t* attn);

// qkv: pre-RoPE (rotated here, after the latent writes).
absl::Status SalsAttention(const AttentionStep& step, const LayerKv& kv, uint16_t* qkv,
                           uint16_t* attn);

}  // namespace sals::cuda
