#include "engine/backend/cuda/cuda_forward.h"

#include <bit>
#include <utility>

#include "engine/backend/cuda/cuda_attention.h"
#include "engine/backend/cuda/cuda_step_views.h"
#include "sals/kernels/elementwise.h"

namespace sals::cuda {
namespace {

namespace kn = ::sals::kernels;

constexpr size_t kCublasWorkspaceBytes = size_t{32} << 20;  // cuBLAS's advice for Hopper

cudaDataType_t CublasDType(DType t) { return t == DType::kBF16 ? CUDA_R_16BF : CUDA_R_16F; }

}  // namespace

absl::StatusOr<ForwardPass> ForwardPass::Create(const ModelConfig& config, DType dtype,
                                                int block_size, cudaStream_t stream) {
  ForwardPass f(config, dtype, block_size, stream);
  auto cublas = CublasHandle::Create();
  if (!cublas.ok()) return cublas.status();
  f.cublas_ = std::move(*cublas);
  auto workspace = kn::DeviceBuffer<uint8_t>::Allocate(kCublasWorkspaceBytes);
  if (!workspace.ok()) return workspace.status();
  f.cublas_workspace_ = std::move(*workspace);
  SALS_CUBLAS_RETURN_IF_ERROR(cublasSetStream(f.cublas_.get(), stream));
  // An explicit workspace keeps cuBLAS from allocating while a graph is being captured.
  SALS_CUBLAS_RETURN_IF_ERROR(
      cublasSetWorkspace(f.cublas_.get(), f.cublas_workspace_.get(), f.cublas_workspace_.bytes()));
  if (absl::StatusOr<bool> g = Grow(&f.meta_, 4096); !g.ok()) return g.status();
  return f;
}

absl::StatusOr<bool> ForwardPass::Reserve(const StepPlan& plan, const StepKernels& kernels,
                                          int num_sparse) {
  const ModelConfig& c = config_;
  const size_t t = static_cast<size_t>(plan.tokens);
  const size_t rows = static_cast<size_t>(plan.rows);
  bool moved = false;
  auto grow = [&moved]<typename T>(kn::DeviceBuffer<T>* buf, size_t count) -> absl::Status {
    absl::StatusOr<bool> g = Grow(buf, count);
    if (!g.ok()) return g.status();
    moved |= *g;
    return absl::OkStatus();
  };
  const size_t row = c.q_width() + 2 * static_cast<size_t>(c.kv_width());
  const size_t scratch = static_cast<size_t>(plan.scratch_rows) * c.kv_width();
  for (const absl::Status& s :
       {grow(&act_.residual, t * c.hidden_size), grow(&act_.xn, t * c.hidden_size),
        grow(&act_.qkv, t * row), grow(&act_.attn, t * c.q_width()),
        grow(&act_.gate_up, t * 2 * c.intermediate_size), grow(&act_.act, t * c.intermediate_size),
        grow(&act_.proj, t * c.hidden_size), grow(&selected_, rows * c.hidden_size),
        grow(&logits_, rows * c.vocab_size), grow(&argmax_, rows), grow(&meta_, plan.meta.bytes),
        grow(&decode_workspace_, kernels.decode_workspace),
        grow(&qkv_pre_, num_sparse > 0 ? plan.decode_seqs * row : 0),
        grow(&sals_workspace_, kernels.sals_workspace), grow(&scratch_k_, scratch),
        grow(&scratch_v_, scratch)}) {
    if (!s.ok()) return s;
  }
  if (meta_host_.size() < plan.meta.bytes) {
    auto pinned = PinnedBuffer<uint8_t>::Allocate(std::bit_ceil(plan.meta.bytes));
    if (!pinned.ok()) return pinned.status();
    meta_host_ = std::move(*pinned);
  }
  return moved;
}

absl::Status ForwardPass::UploadMeta(const StepPlan& plan) {
  SALS_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(meta_.get(), meta_host_.get(), plan.meta.bytes,
                                            cudaMemcpyHostToDevice, stream_));
  return absl::OkStatus();
}

absl::Status ForwardPass::Gemm(const void* x, const void* w, int64_t t, int n, int k, void* y,
                               cudaDataType_t y_type) {
  const float alpha = 1.0f, beta = 0.0f;
  const cudaDataType_t ab = CublasDType(dtype_);
  SALS_CUBLAS_RETURN_IF_ERROR(
      cublasGemmEx(cublas_.get(), CUBLAS_OP_T, CUBLAS_OP_N, n, static_cast<int>(t), k, &alpha, w,
                   ab, k, x, ab, k, &beta, y, y_type, n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  return absl::OkStatus();
}

absl::Status ForwardPass::Enqueue(const StepPlan& p, const StepKernels& kernels,
                                  const ModelWeights& weights, const KvArena& arena, bool argmax) {
  const ModelConfig& c = config_;
  const cudaStream_t st = stream_;
  const kn::DType dt = KernelDType(dtype_);
  const cudaDataType_t act_type = CublasDType(dtype_);
  const int h = c.hidden_size, qw = c.q_width(), kvw = c.kv_width(), row = qw + 2 * kvw;
  const int inter = c.intermediate_size;
  const float eps = static_cast<float>(c.rms_norm_eps);
  const StepViews views(meta_.get(), p, c, block_size_);
  const auto* tokens = views.at<int32_t>(p.meta.tokens);
  const auto* positions = views.at<int32_t>(p.meta.positions);
  const auto* rows = views.at<int32_t>(p.meta.rows);
  const float* inv_freq = weights.inv_freq.get();
  uint16_t* residual = act_.residual.get();
  uint16_t* xn = act_.xn.get();
  uint16_t* qkv = act_.qkv.get();
  uint16_t* attn = act_.attn.get();
  uint16_t* proj = act_.proj.get();
  const int64_t t = p.tokens;
  const AttentionStep step{c,
                           dt,
                           st,
                           p,
                           kernels,
                           views,
                           inv_freq,
                           decode_workspace_.get(),
                           sals_workspace_.get(),
                           qkv_pre_.get(),
                           scratch_k_.get(),
                           scratch_v_.get()};

  SALS_KERNELS_RETURN_IF_ERROR(
      kn::EmbeddingGather(dt, weights.embed.get(), c.vocab_size, h, tokens, t, residual, st));
  for (int l = 0; l < c.num_layers; ++l) {
    const LayerWeights& w = weights.layers[l];
    // The previous layer's MLP output joins the residual stream here.
    SALS_KERNELS_RETURN_IF_ERROR(
        l == 0 ? kn::RmsNorm(dt, residual, w.input_norm.get(), t, h, eps, xn, st)
               : kn::AddRmsNorm(dt, residual, proj, w.input_norm.get(), t, h, eps, xn, st));
    SALS_KERNELS_RETURN_IF_ERROR(Gemm(xn, w.wqkv.get(), t, row, h, qkv, act_type));
    if (qkv_hook_) SALS_KERNELS_RETURN_IF_ERROR(qkv_hook_(l, qkv, t));
    const LayerKv& kv = arena.layer(l);
    if (kv.dense) {
      SALS_KERNELS_RETURN_IF_ERROR(kn::ApplyRopeQk(dt, qkv, t, row, c.num_heads, c.num_kv_heads,
                                                   c.head_dim, positions, inv_freq, st));
      SALS_KERNELS_RETURN_IF_ERROR(DenseAttention(step, kv, qkv, attn));
    } else {
      SALS_KERNELS_RETURN_IF_ERROR(SalsAttention(step, kv, qkv, attn));
    }
    SALS_KERNELS_RETURN_IF_ERROR(Gemm(attn, w.wo.get(), t, h, qw, proj, act_type));
    SALS_KERNELS_RETURN_IF_ERROR(
        kn::AddRmsNorm(dt, residual, proj, w.post_norm.get(), t, h, eps, xn, st));
    SALS_KERNELS_RETURN_IF_ERROR(
        Gemm(xn, w.w_gate_up.get(), t, 2 * inter, h, act_.gate_up.get(), act_type));
    SALS_KERNELS_RETURN_IF_ERROR(kn::SiluMul(dt, act_.gate_up.get(), t, inter, act_.act.get(), st));
    SALS_KERNELS_RETURN_IF_ERROR(Gemm(act_.act.get(), w.w_down.get(), t, h, inter, proj, act_type));
  }
  SALS_KERNELS_RETURN_IF_ERROR(
      kn::AddRmsNorm(dt, residual, proj, weights.final_norm.get(), t, h, eps, xn, st));
  // Only the requested rows go through the LM head (the row gather reuses the embedding one).
  SALS_KERNELS_RETURN_IF_ERROR(
      kn::EmbeddingGather(dt, xn, t, h, rows, p.rows, selected_.get(), st));
  SALS_KERNELS_RETURN_IF_ERROR(
      Gemm(selected_.get(), weights.head(c), p.rows, c.vocab_size, h, logits_.get(), CUDA_R_32F));
  if (argmax) {
    SALS_KERNELS_RETURN_IF_ERROR(
        kn::ArgmaxRows(kn::DType::kF32, logits_.get(), p.rows, c.vocab_size, argmax_.get(), st));
  }
  return absl::OkStatus();
}

}  // namespace sals::cuda
