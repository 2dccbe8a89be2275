// The CUDA backend: fp16/bf16 weights and activations on one GPU, GEMMs through cuBLAS (fp32
// accumulation), everything else through kernels/. This file wires the parts and implements the
// Backend interface; each part has a file of its own:
//   cuda_weights      the model's weights on the device (uploaded once);
//   cuda_kv_arena     the paged KV pool: dense K/V or SALS storage per layer, and the bases;
//   step_plan         host planning of a step (device order, padding, metadata, SALS groups,
//                     scratch rows, graph keys), with no CUDA dependency;
//   cuda_step_kernels the kernels' own plans of a step and their workspaces;
//   cuda_step_views   the step's device metadata as the kernels' cache structs;
//   cuda_forward      the per-step buffers and the launches of a step (the layer loop);
//   cuda_attention    a dense or SALS layer's attention within those launches;
//   cuda_graphs       captured CUDA graphs of pure-decode steps;
//   cuda_sampler      sampling on the device;
//   cuda_key_covariance the pre-RoPE key covariance sums sals-calibrate asks for.
// A step: validate the batch, plan it on the host (asking the kernels' planners where they
// decide), size the buffers, write the metadata to pinned memory and upload it with one copy,
// then enqueue the launches eagerly or replay a graph; results are copied back and the stream
// synchronized.
#include "engine/backend/cuda/cuda_backend.h"

#include <cuda_runtime_api.h>

#include <memory>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/backend/batch_validation.h"
#include "engine/backend/cuda/cuda_forward.h"
#include "engine/backend/cuda/cuda_graphs.h"
#include "engine/backend/cuda/cuda_key_covariance.h"
#include "engine/backend/cuda/cuda_kv_arena.h"
#include "engine/backend/cuda/cuda_resources.h"
#include "engine/backend/cuda/cuda_sampler.h"
#include "engine/backend/cuda/cuda_step_kernels.h"
#include "engine/backend/cuda/cuda_weights.h"
#include "engine/backend/cuda/step_plan.h"
#include "engine/backend/host_sampling.h"
#include "engine/kv/kv_format.h"
#include "sals/kernels/cuda_utils.h"

namespace sals {
namespace {

namespace kn = ::sals::kernels;

constexpr int kMaterializeMaxHeadDim = 128;

cuda::StepPlanOptions PlanOptions(const KvPoolConfig& pool, const CudaBackendOptions& options) {
  cuda::StepPlanOptions o;
  o.block_size = pool.block_size;
  o.num_sparse_layers = pool.format.NumSparseLayers();
  if (pool.format.sals) o.storage = *pool.format.sals;
  o.cuda_graphs = options.cuda_graphs && !options.key_covariance;
  o.max_graph_batch = options.max_graph_batch;
  return o;
}

class CudaBackendImpl : public CudaBackend {
 public:
  CudaBackendImpl(const ModelConfig& config, const KvPoolConfig& pool,
                  const CudaBackendOptions& options)
      : config_(config),
        pool_(pool),
        options_(options),
        plan_options_(PlanOptions(pool, options)) {}

  absl::Status Init(const WeightSource& weights) {
    SALS_CUDA_RETURN_IF_ERROR(cudaSetDevice(options_.device));
    auto stream = kn::Stream::Create();
    if (!stream.ok()) return stream.status();
    stream_ = std::move(*stream);
    auto forward =
        cuda::ForwardPass::Create(config_, options_.dtype, pool_.block_size, stream_.get());
    if (!forward.ok()) return forward.status();
    forward_.emplace(std::move(*forward));
    if (options_.key_covariance) {
      auto capture = cuda::KeyCovarianceCapture::Create(config_, options_.dtype, stream_.get());
      if (!capture.ok()) return capture.status();
      key_covariance_.emplace(std::move(*capture));
      forward_->set_qkv_hook([this](int layer, const uint16_t* qkv, int64_t tokens) {
        return key_covariance_->Add(layer, qkv, tokens);
      });
    }
    for (auto* event : {&start_, &stop_}) {
      auto e = kn::Event::Create();
      if (!e.ok()) return e.status();
      *event = std::move(*e);
    }
    auto uploaded = cuda::UploadWeights(config_, weights, options_.dtype);
    if (!uploaded.ok()) return uploaded.status();
    weights_ = std::move(*uploaded);
    auto arena = cuda::KvArena::Allocate(config_, pool_, options_.sals_basis);
    if (!arena.ok()) return arena.status();
    arena_ = std::move(*arena);
    // Refuse unsupported head shapes now rather than at the first step.
    if (absl::Status s = kernel_planner_.CheckShapes(forward_->meta()); !s.ok()) return s;
    SALS_CUDA_RETURN_IF_ERROR(cudaDeviceSynchronize());
    return absl::OkStatus();
  }

  const ModelConfig& config() const override { return config_; }
  const KvPoolConfig& kv_pool() const override { return pool_; }

  std::optional<DeviceMemory> device_memory() const override {
    size_t free_bytes = 0, total_bytes = 0;
    if (cudaMemGetInfo(&free_bytes, &total_bytes) != cudaSuccess) return std::nullopt;
    return DeviceMemory{static_cast<int64_t>(total_bytes - free_bytes),
                        static_cast<int64_t>(total_bytes)};
  }

  absl::Status Forward(const ForwardBatch& batch, ForwardOutput* out) override {
    out->sals_attended_tokens = out->sals_cached_tokens = 0;
    if (absl::Status s = Step(batch, /*greedy=*/false, &out->row_begin); !s.ok()) return s;
    out->sals_attended_tokens = plan_.attended_tokens;
    out->sals_cached_tokens = plan_.cached_tokens;
    out->logits.resize(static_cast<size_t>(plan_.out_rows) * config_.vocab_size);
    SALS_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(out->logits.data(), forward_->logits(),
                                              out->logits.size() * sizeof(float),
                                              cudaMemcpyDeviceToHost, stream_.get()));
    return FinishStep();
  }

  absl::Status ForwardSample(const ForwardBatch& batch, std::span<const RowSampling* const> rows,
                             std::vector<SampleResult>* results, ForwardOutput* out) override {
    if (absl::Status s = ValidateSampleRows(batch, rows); !s.ok()) return s;
    out->logits.clear();
    out->sals_attended_tokens = out->sals_cached_tokens = 0;
    // One logits row per sequence, its last token's (the argmax the step also takes is cheap).
    if (absl::Status s = Step(batch, /*greedy=*/true, &out->row_begin); !s.ok()) return s;
    out->sals_attended_tokens = plan_.attended_tokens;
    out->sals_cached_tokens = plan_.cached_tokens;
    if (absl::Status s = sampler_.Enqueue(rows, out->row_begin, forward_->logits(),
                                          config_.vocab_size, stream_.get());
        !s.ok()) {
      return s;
    }
    if (absl::Status s = FinishStep(); !s.ok()) return s;
    sampler_.Results(rows, results);
    return absl::OkStatus();
  }

  absl::Status ForwardGreedy(const ForwardBatch& batch, std::vector<int32_t>* tokens) override {
    std::vector<int32_t> row_begin;
    if (absl::Status s = Step(batch, /*greedy=*/true, &row_begin); !s.ok()) return s;
    tokens->resize(plan_.out_rows);
    SALS_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(tokens->data(), forward_->argmax(),
                                              tokens->size() * sizeof(int32_t),
                                              cudaMemcpyDeviceToHost, stream_.get()));
    return FinishStep();
  }

  absl::Status FillKvCacheRandom(uint64_t seed) override {
    SALS_CUDA_RETURN_IF_ERROR(cudaSetDevice(options_.device));
    return arena_.FillRandom(seed, stream_.get());
  }

  absl::StatusOr<float> LastStepMs() const override {
    if (!options_.time_steps || !timed_step_) {
      return absl::FailedPreconditionError("no timed step (set CudaBackendOptions::time_steps)");
    }
    return stop_.ElapsedMsSince(start_);
  }

  absl::StatusOr<KeyCovarianceSums> TakeKeyCovariance() override {
    if (!key_covariance_) {
      return absl::FailedPreconditionError(
          "no key covariance (set CudaBackendOptions::key_covariance)");
    }
    SALS_CUDA_RETURN_IF_ERROR(cudaSetDevice(options_.device));
    return key_covariance_->Take();
  }

 private:
  // Validates, plans, uploads and enqueues one step; its results are then copied back by the
  // caller, which ends with FinishStep.
  absl::Status Step(const ForwardBatch& batch, bool greedy, std::vector<int32_t>* row_begin) {
    if (absl::Status s = ValidateForwardBatch(batch, config_, pool_); !s.ok()) return s;
    if (config_.sliding_window) {
      for (const SequenceSlice& seq : batch.seqs) {
        if (seq.context_len + seq.num_tokens > *config_.sliding_window) {
          return absl::UnimplementedError(
              absl::StrCat("the CUDA backend has no sliding-window attention; a sequence of ",
                           seq.context_len + seq.num_tokens, " tokens exceeds the window of ",
                           *config_.sliding_window));
        }
      }
    }
    SALS_CUDA_RETURN_IF_ERROR(cudaSetDevice(options_.device));
    timed_step_ = false;
    if (absl::Status s = Plan(batch, greedy); !s.ok()) return s;
    *row_begin = plan_.row_begin;
    if (options_.time_steps) {
      if (absl::Status s = start_.Record(stream_.get()); !s.ok()) return s;
    }
    if (absl::Status s = forward_->UploadMeta(plan_); !s.ok()) return s;
    if (plan_.tokens == 0) return absl::OkStatus();
    auto enqueue = [this](bool argmax) {
      return forward_->Enqueue(plan_, kernels_, weights_, arena_, argmax);
    };
    if (!plan_.graph) return enqueue(greedy);
    return graphs_.Run(cuda::GraphKey(plan_, cuda::KernelKey(kernels_)), stream_.get(),
                       [&enqueue] { return enqueue(/*argmax=*/true); });
  }

  // Host side of a step: the plan (the kernels' planners decide the SALS groups' paths), the
  // kernels' plans, the buffers sized for them, the metadata in pinned memory.
  absl::Status Plan(const ForwardBatch& batch, bool greedy) {
    kernels_ = cuda::StepKernels{};
    const uint8_t* meta = forward_->meta();
    absl::StatusOr<cuda::StepPlan> plan = cuda::PlanStep(
        batch, greedy, plan_options_,
        [&](const cuda::StepPlan& p, const cuda::SalsGroupPlan& g) -> absl::StatusOr<bool> {
          return kernel_planner_.PlanSalsGroup(p, g, meta, &kernels_);
        });
    if (!plan.ok()) return plan.status();
    plan_ = std::move(*plan);
    if (absl::Status s = kernel_planner_.Finish(plan_, meta, &kernels_); !s.ok()) return s;
    absl::StatusOr<bool> moved = forward_->Reserve(plan_, kernels_, arena_.num_sparse());
    // A failed reservation may already have moved (or freed) other buffers: no captured graph
    // may be replayed over them.
    if (!moved.ok() || *moved) graphs_.Clear();
    if (!moved.ok()) return moved.status();
    return cuda::WriteStepMeta(batch, plan_, plan_options_, forward_->meta_host());
  }

  absl::Status FinishStep() {
    if (options_.time_steps) {
      if (absl::Status s = stop_.Record(stream_.get()); !s.ok()) return s;
    }
    if (absl::Status s = stream_.Synchronize(); !s.ok()) return s;
    timed_step_ = options_.time_steps;
    return absl::OkStatus();
  }

  const ModelConfig config_;
  const KvPoolConfig pool_;
  const CudaBackendOptions options_;
  const cuda::StepPlanOptions plan_options_;

  kn::Stream stream_;
  std::optional<cuda::ForwardPass> forward_;  // set by Init
  kn::Event start_, stop_;
  bool timed_step_ = false;
  cuda::ModelWeights weights_;
  cuda::KvArena arena_;
  const cuda::StepKernelPlanner kernel_planner_{config_, pool_, arena_,
                                                cuda::KernelDType(options_.dtype)};
  cuda::StepPlan plan_;
  cuda::StepKernels kernels_;
  cuda::GraphCache graphs_;
  cuda::DeviceSampler sampler_;
  std::optional<cuda::KeyCovarianceCapture> key_covariance_;  // options.key_covariance
};

absl::StatusOr<std::unique_ptr<CudaBackend>> Create(const ModelConfig& config,
                                                    const WeightSource& weights,
                                                    const KvPoolConfig& pool,
                                                    const CudaBackendOptions& options) {
  if (options.dtype != DType::kF16 && options.dtype != DType::kBF16) {
    return absl::InvalidArgumentError(absl::StrCat("the CUDA backend computes in F16 or BF16, not ",
                                                   std::string(DTypeName(options.dtype))));
  }
  if (pool.num_blocks <= 0 || pool.block_size <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("KV pool needs positive num_blocks and ",
                                                   "block_size, got ", pool.num_blocks, " and ",
                                                   pool.block_size));
  }
  KvPoolConfig resolved = pool;
  if (resolved.format.dense_layer.empty()) {
    resolved.format.dense_layer.assign(config.num_layers, true);
  }
  if (absl::Status s = ValidateKvCacheFormat(config, resolved.format); !s.ok()) return s;
  if (absl::Status s = CheckCudaKvFormat(resolved.format); !s.ok()) return s;
  if (const auto& sals = resolved.format.sals) {
    const SalsBasis& b = options.sals_basis;
    if (b.width != config.kv_width() || b.rank < sals->rank ||
        static_cast<int>(b.layers.size()) != config.num_layers) {
      return absl::InvalidArgumentError(absl::StrCat(
          "SALS storage of rank ", sals->rank, " needs a basis of width ", config.kv_width(),
          " and rank >= ", sals->rank, " for ", config.num_layers, " layers; got width ", b.width,
          ", rank ", b.rank, ", ", b.layers.size(), " layers (CudaBackendOptions::sals_basis)"));
    }
    for (int l = 0; l < config.num_layers; ++l) {
      if (!resolved.format.IsDense(l) &&
          b.layers[l].size() != static_cast<size_t>(b.width) * b.rank) {
        return absl::InvalidArgumentError(absl::StrCat("SALS basis of layer ", l, " has ",
                                                       b.layers[l].size(), " values, not ", b.width,
                                                       " x ", b.rank));
      }
    }
    if (resolved.max_sequences <= 0) {
      return absl::InvalidArgumentError("SALS storage needs max_sequences > 0");
    }
    const int group = config.group_size();
    if (resolved.format.NumSparseLayers() > 0 &&
        (config.head_dim % 2 != 0 || config.head_dim > kMaterializeMaxHeadDim ||
         (group != 1 && group != 2 && group != 4 && group != 8))) {
      return absl::InvalidArgumentError(absl::StrCat(
          "the CUDA backend's SALS layers need an even head_dim up to ", kMaterializeMaxHeadDim,
          " and 1, 2, 4 or 8 query heads per KV head; the model has head_dim ", config.head_dim,
          " and ", config.num_heads, "/", config.num_kv_heads, " heads"));
    }
  }
  int devices = 0;
  if (const cudaError_t err = cudaGetDeviceCount(&devices); err != cudaSuccess || devices == 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("no CUDA device visible: ",
                     err != cudaSuccess ? cudaGetErrorString(err) : "device count is 0"));
  }
  if (options.device < 0 || options.device >= devices) {
    return absl::InvalidArgumentError(
        absl::StrCat("CUDA device ", options.device, " requested, ", devices, " visible"));
  }
  auto backend = std::make_unique<CudaBackendImpl>(config, resolved, options);
  if (absl::Status s = backend->Init(weights); !s.ok()) return s;
  return backend;
}

}  // namespace
}  // namespace sals

extern "C" {

int SalsCudaBackendAbiVersion() { return sals::kCudaBackendAbiVersion; }

sals::CudaBackend* SalsCreateCudaBackend(const sals::ModelConfig* config,
                                         const sals::WeightSource* weights,
                                         const sals::KvPoolConfig* pool,
                                         const sals::CudaBackendOptions* options,
                                         absl::Status* status) {
  absl::StatusOr<std::unique_ptr<sals::CudaBackend>> backend =
      sals::Create(*config, *weights, *pool, *options);
  if (!backend.ok()) {
    *status = backend.status();
    return nullptr;
  }
  *status = absl::OkStatus();
  return backend->release();
}

}  // extern "C"
