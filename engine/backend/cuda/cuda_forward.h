// The forward pass of a step on the device: the per-step buffers (activations, logits, metadata,
// workspaces, the SALS scratch pool), sized for each plan, and the launches that eager steps run
// and graphs capture: the embedding; per layer the norms, GEMMs (cuBLAS, fp32 accumulation),
// attention (cuda_attention.h) and MLP; the final norm, the LM head over the requested rows only,
// and their argmax.
#pragma once

#include <cublas_v2.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <functional>
#include <span>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/backend/cuda/cuda_kv_arena.h"
#include "engine/backend/cuda/cuda_resources.h"
#include "engine/backend/cuda/cuda_step_kernels.h"
#include "engine/backend/cuda/cuda_weights.h"
#include "engine/backend/cuda/step_plan.h"
#include "engine/common/dtype.h"
#include "engine/model/config.h"
#include "sals/kernels/cuda_utils.h"

namespace sals::cuda {

class ForwardPass {
 public:
  // A cuBLAS handle on `stream` with its own workspace (so that cuBLAS never allocates while a
  // graph is captured), and a small metadata buffer, so that its pointer is never null.
  static absl::StatusOr<ForwardPass> Create(const ModelConfig& config, DType dtype, int block_size,
                                            cudaStream_t stream);

  // Sizes every buffer for the step; true when a device buffer moved (captured graphs hold the
  // old pointers).
  absl::StatusOr<bool> Reserve(const StepPlan& plan, const StepKernels& kernels, int num_sparse);

  // The step's metadata on the device, and its pinned host staging (sized by Reserve).
  const uint8_t* meta() const { return meta_.get(); }
  std::span<uint8_t> meta_host() { return {meta_host_.get(), meta_host_.size()}; }
  // Copies plan.meta.bytes of the staged metadata to the device, on the stream.
  absl::Status UploadMeta(const StepPlan& plan);

  // The device work of the step, launches only (also what a graph captures); `argmax` also
  // takes each logits row's argmax.
  absl::Status Enqueue(const StepPlan& plan, const StepKernels& kernels,
                       const ModelWeights& weights, const KvArena& arena, bool argmax);

  // Called in each layer right after its q|k|v projection, before RoPE, with the step's rows
  // (device memory, plan.tokens rows); its launches join the step's (sals-calibrate's key
  // covariance). Unset: nothing is called.
  using QkvHook = std::function<absl::Status(int layer, const uint16_t* qkv, int64_t tokens)>;
  void set_qkv_hook(QkvHook hook) { qkv_hook_ = std::move(hook); }

  float* logits() const { return logits_.get(); }          // [plan.rows x vocab]
  const int32_t* argmax() const { return argmax_.get(); }  // [plan.rows]

 private:
  ForwardPass(const ModelConfig& config, DType dtype, int block_size, cudaStream_t stream)
      : config_(config), dtype_(dtype), block_size_(block_size), stream_(stream) {}

  // y[t, n] = x[t, k] . w[n, k]^T (row-major; cuBLAS sees the column-major transpose).
  absl::Status Gemm(const void* x, const void* w, int64_t t, int n, int k, void* y,
                    cudaDataType_t y_type);

  ModelConfig config_;
  DType dtype_;
  int block_size_;
  cudaStream_t stream_;
  kernels::DeviceBuffer<uint8_t> cublas_workspace_;  // outlives the handle that uses it
  CublasHandle cublas_;

  struct Activations {
    Buffer16 residual, xn, qkv, attn, gate_up, act, proj;
  };
  Activations act_;
  Buffer16 selected_;  // the LM head's input rows
  Buffer16 qkv_pre_;   // SALS: the decode rows' q|k|v before RoPE
  kernels::DeviceBuffer<float> logits_;
  kernels::DeviceBuffer<int32_t> argmax_;
  kernels::DeviceBuffer<uint8_t> meta_, decode_workspace_, sals_workspace_;
  kernels::DeviceBuffer<__half> scratch_k_, scratch_v_;  // SALS: materialized rows + new K/V
  PinnedBuffer<uint8_t> meta_host_;
  QkvHook qkv_hook_;
};

}  // namespace sals::cuda
