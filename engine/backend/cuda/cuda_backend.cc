// The CUDA backend: fp16/bf16 weights and activations on one GPU, GEMMs through cuBLAS (fp32
// accumulation), everything else through kernels/. The KV pool is paged: dense layers keep fp16
// K/V per token slot; SALS layers (a pool format with `sals`) keep per token slot the latent key
// and the quantized value, per sequence slot exact copies of the sink and recent tokens, and the
// layer's basis (sals_kv.h).
//
// A step's sequences are reordered on the device so that one-token slices come first (grouped by
// SALS policy; one decode-attention launch per group and layer) and prefill chunks after (one
// prefill-attention launch); every other stage works on token rows and does not care about the
// order. Logit rows come back in the batch's own order.
//
// A SALS layer, per step: the new tokens' latents and quantized values are stored before RoPE
// (SalsWriteLatentValues takes the pre-RoPE keys straight from the qkv rows); the decode rows'
// q|k|v are copied first, since the latent query is pre-RoPE. Decode slices attend through
// SalsDecodeAttention where its kernels take the shape (head_dim 64/128, rank a multiple of 8),
// else through a fallback of the same semantics: its stages 1-3 select, SalsMaterializeSelection
// writes the attended keys and values as dense fp16 rows into a scratch pool and the dense decode
// kernel attends. Prefill chunks attend densely to their cached context and themselves, as the CPU
// reference does: SalsMaterializeContext rebuilds the context (exact rows where the slot holds
// them) into the scratch pool, the chunk's own post-RoPE K/V join it, and the dense prefill kernel
// runs over it. After attention, sinks and the tokens that end in the recent ring get exact copies.
#include "engine/backend/cuda/cuda_backend.h"

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <initializer_list>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/backend/batch_validation.h"
#include "engine/backend/cuda/cuda_resources.h"
#include "engine/backend/cuda/device_sampling.h"
#include "engine/backend/host_sampling.h"
#include "engine/kv/kv_format.h"
#include "engine/sals/policy.h"
#include "sals/kernels/attention.h"
#include "sals/kernels/cuda_utils.h"
#include "sals/kernels/elementwise.h"
#include "sals/kernels/paged_kv.h"
#include "sals/kernels/sals_decode.h"
#include "sals/kernels/sals_kv.h"
#include "sals/kernels/sals_materialize.h"
#include "sals/kernels/sampling.h"

namespace sals {
namespace {

namespace kn = ::sals::kernels;
using kn::DeviceBuffer;

// Activations and weights: 16-bit words, f16 or bf16 as the options say.
using Buffer16 = DeviceBuffer<uint16_t>;

constexpr size_t kCublasWorkspaceBytes = size_t{32} << 20;  // cuBLAS's advice for Hopper
constexpr size_t kMaxCachedGraphs = 128;
constexpr int kScratchBlock = 16;  // tokens per block of the SALS scratch pool
constexpr int kMaterializeMaxHeadDim = 128;

kn::DType KernelDType(DType t) { return t == DType::kBF16 ? kn::DType::kBF16 : kn::DType::kF16; }
cudaDataType_t CublasDType(DType t) { return t == DType::kBF16 ? CUDA_R_16BF : CUDA_R_16F; }

size_t RoundUp(size_t x, size_t m) { return (x + m - 1) / m * m; }
int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Padded batch of a graph-replayed decode step: powers of two up to 8, then multiples of 16.
int GraphBatch(int n) {
  return n <= 8 ? static_cast<int>(std::bit_ceil(static_cast<unsigned>(n)))
                : static_cast<int>(RoundUp(n, 16));
}

// Context length a graph's attention split is planned for: sixteen steps per octave (a plan made
// for a longer context is correct, at most a sixteenth slower), so that a growing sequence gets a
// new graph only every sixteenth of a doubling.
int KvBucket(int len) {
  if (len <= 0) return 0;
  const int step = std::max(256, static_cast<int>(std::bit_floor(static_cast<unsigned>(len))) / 16);
  return static_cast<int>(RoundUp(len, step));
}

// Grows `buf` to at least `count` elements (a power of two, so that growth is rare); true when
// it moved, which invalidates captured graphs.
template <typename T>
absl::StatusOr<bool> Grow(DeviceBuffer<T>* buf, size_t count) {
  if (buf->size() >= count) return false;
  buf->Reset();  // contents are per step; free first so that peak memory is not doubled
  absl::StatusOr<DeviceBuffer<T>> grown = DeviceBuffer<T>::Allocate(std::bit_ceil(count));
  if (!grown.ok()) return grown.status();
  *buf = std::move(*grown);
  return true;
}

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

bool SamePolicy(const kn::SalsSelectionPolicy& a, const kn::SalsSelectionPolicy& b) {
  return a.rank == b.rank && a.score_dims == b.score_dims && a.topk_fraction == b.topk_fraction &&
         a.token_budget == b.token_budget && a.select_all == b.select_all &&
         a.sink_tokens == b.sink_tokens && a.recent_tokens == b.recent_tokens;
}

// Byte offsets of the per-step metadata inside one buffer (uploaded with one copy). The SALS
// arrays are empty for dense pools.
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

// The decode slices of one SALS policy: a contiguous range of the device order.
struct SalsGroup {
  int begin = 0;
  int count = 0;
  kn::SalsSelectionPolicy policy;  // as resolved (its rank may be any prefix of the stored one)
  int planned_cached = 0;          // bounds every cached length of the group
  // SalsDecodeAttention's plan when its kernels take the shape; else the fallback's: `plan`
  // drives stages 1-3 (with `stage_policy`), `dense` the dense attention over the scratch rows.
  bool fast = false;
  kn::SalsSelectionPolicy stage_policy;
  kn::SalsDecodePlan plan;
  kn::DecodeAttentionPlan dense;
  int max_rows = 0;  // fallback: scratch rows of the longest sequence, the new token included
};

// One step as the device runs it (padded for graph steps).
struct StepPlan {
  int64_t tokens = 0;   // activation rows
  int decode_seqs = 0;  // one-token sequences, first in device order
  int prefill_seqs = 0;
  int max_q_len = 0;
  int rows = 0;      // logits rows computed
  int out_rows = 0;  // logits rows returned (the first ones)
  int64_t table_stride = 0;
  kn::DecodeAttentionPlan decode;
  bool graph = false;
  MetaLayout meta;
  // SALS layers.
  std::vector<SalsGroup> groups;
  int max_context = 0;  // longest cached context among the prefill chunks
  int64_t scratch_stride = 1;
  int64_t scratch_rows = 0;
  size_t sals_workspace = 0;
};

struct LayerWeights {
  Buffer16 input_norm, wqkv, wo, post_norm, w_gate_up, w_down;
};

struct Activations {
  Buffer16 residual, xn, qkv, attn, gate_up, act, proj;
};

// Where a layer's KV storage lives in the pool's arena.
struct LayerKv {
  bool dense = true;
  __half* k = nullptr;  // dense: [slots x D]
  __half* v = nullptr;
  kn::SalsKvCache sals;  // SALS: storage pointers and shapes; per-step fields filled per launch
};

class CudaBackendImpl : public CudaBackend {
 public:
  CudaBackendImpl(const ModelConfig& config, const KvPoolConfig& pool,
                  const CudaBackendOptions& options)
      : config_(config), pool_(pool), options_(options) {}

  absl::Status Init(const WeightSource& weights) {
    SALS_CUDA_RETURN_IF_ERROR(cudaSetDevice(options_.device));
    auto stream = kn::Stream::Create();
    if (!stream.ok()) return stream.status();
    stream_ = std::move(*stream);
    auto cublas = cuda::CublasHandle::Create();
    if (!cublas.ok()) return cublas.status();
    cublas_ = std::move(*cublas);
    auto workspace = DeviceBuffer<uint8_t>::Allocate(kCublasWorkspaceBytes);
    if (!workspace.ok()) return workspace.status();
    cublas_workspace_ = std::move(*workspace);
    SALS_CUBLAS_RETURN_IF_ERROR(cublasSetStream(cublas_.get(), stream_.get()));
    // An explicit workspace keeps cuBLAS from allocating while a graph is being captured.
    SALS_CUBLAS_RETURN_IF_ERROR(
        cublasSetWorkspace(cublas_.get(), cublas_workspace_.get(), cublas_workspace_.bytes()));
    for (auto* event : {&start_, &stop_}) {
      auto e = kn::Event::Create();
      if (!e.ok()) return e.status();
      *event = std::move(*e);
    }
    if (absl::Status s = LoadWeights(weights); !s.ok()) return s;

    const std::vector<double> inv_freq = RopeInverseFrequencies(config_);
    std::vector<float> inv_freq_f(inv_freq.begin(), inv_freq.end());
    auto d_inv_freq = DeviceBuffer<float>::Allocate(inv_freq_f.size());
    if (!d_inv_freq.ok()) return d_inv_freq.status();
    inv_freq_ = std::move(*d_inv_freq);
    if (absl::Status s = inv_freq_.CopyFrom(inv_freq_f); !s.ok()) return s;

    if (absl::Status s = AllocateKv(); !s.ok()) return s;
    // Small initial metadata so that its pointers are never null (the attention planner checks).
    if (absl::StatusOr<bool> g = Grow(&meta_, 4096); !g.ok()) return g.status();

    // Refuse unsupported head shapes now rather than at the first step.
    auto plan =
        kn::PlanDecodeAttention(kdtype_, DenseView(kv_arena_.get(), 0, 1), 1, config_.num_heads, 1);
    if (!plan.ok()) return plan.status();
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
    out->sals_attended_tokens = step_attended_;
    out->sals_cached_tokens = step_cached_;
    out->logits.resize(static_cast<size_t>(plan_.out_rows) * config_.vocab_size);
    SALS_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(out->logits.data(), logits_.get(),
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
    out->sals_attended_tokens = step_attended_;
    out->sals_cached_tokens = step_cached_;
    sample_params_host_.clear();
    sample_penalties_host_.clear();
    for (size_t i = 0; i < rows.size(); ++i) {
      if (rows[i] != nullptr) {
        AppendSampleRow(*rows[i], out->row_begin[i], &sample_params_host_, &sample_penalties_host_);
      }
    }
    const int64_t num_rows = static_cast<int64_t>(sample_params_host_.size());
    const int64_t num_penalties = static_cast<int64_t>(sample_penalties_host_.size());
    sample_results_host_.resize(num_rows);
    if (num_rows > 0) {
      const size_t ws_bytes = kn::SampleRowsWorkspaceBytes(num_rows, num_penalties);
      for (absl::StatusOr<bool> g :
           {Grow(&sample_params_, num_rows),
            Grow(&sample_penalties_, std::max<int64_t>(1, num_penalties)),
            Grow(&sample_workspace_, ws_bytes), Grow(&sample_results_, num_rows)}) {
        if (!g.ok()) return g.status();
      }
      SALS_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(sample_params_.get(), sample_params_host_.data(),
                                                num_rows * sizeof(kn::SampleRowParams),
                                                cudaMemcpyHostToDevice, stream_.get()));
      if (num_penalties > 0) {
        SALS_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(
            sample_penalties_.get(), sample_penalties_host_.data(),
            num_penalties * sizeof(kn::PenaltyEntry), cudaMemcpyHostToDevice, stream_.get()));
      }
      SALS_KERNELS_RETURN_IF_ERROR(
          kn::SampleRows(logits_.get(), config_.vocab_size, sample_params_.get(), num_rows,
                         sample_penalties_.get(), num_penalties, sample_workspace_.get(),
                         sample_workspace_.bytes(), sample_results_.get(), stream_.get()));
      SALS_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(sample_results_host_.data(), sample_results_.get(),
                                                num_rows * sizeof(kn::SampleRowResult),
                                                cudaMemcpyDeviceToHost, stream_.get()));
    }
    if (absl::Status s = FinishStep(); !s.ok()) return s;
    results->assign(rows.size(), SampleResult{});
    for (size_t i = 0, k = 0; i < rows.size(); ++i) {
      if (rows[i] != nullptr) (*results)[i] = FromSampleRowResult(sample_results_host_[k++]);
    }
    return absl::OkStatus();
  }

  absl::Status ForwardGreedy(const ForwardBatch& batch, std::vector<int32_t>* tokens) override {
    std::vector<int32_t> row_begin;
    if (absl::Status s = Step(batch, /*greedy=*/true, &row_begin); !s.ok()) return s;
    tokens->resize(plan_.out_rows);
    SALS_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(tokens->data(), argmax_.get(),
                                              tokens->size() * sizeof(int32_t),
                                              cudaMemcpyDeviceToHost, stream_.get()));
    return FinishStep();
  }

  absl::Status FillKvCacheRandom(uint64_t seed) override {
    SALS_CUDA_RETURN_IF_ERROR(cudaSetDevice(options_.device));
    // A random 32 MiB pattern of fp16 values, then doubling copies over the whole arena (latents,
    // codes, scales, zeros and exact rows of SALS layers alike; the bases live apart).
    const size_t total = kv_arena_.size() / sizeof(uint16_t);
    std::vector<uint16_t> pattern(std::min<size_t>(total, size_t{16} << 20));
    std::mt19937_64 rng(seed);
    std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
    for (uint16_t& h : pattern) h = F32ToF16(dist(rng));
    auto* base = reinterpret_cast<uint16_t*>(kv_arena_.get());
    // On the stream, so that the copies below see the pattern.
    SALS_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(base, pattern.data(),
                                              pattern.size() * sizeof(uint16_t),
                                              cudaMemcpyHostToDevice, stream_.get()));
    for (size_t filled = pattern.size(); filled < total;) {
      const size_t n = std::min(filled, total - filled);
      SALS_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(base + filled, base, n * sizeof(uint16_t),
                                                cudaMemcpyDeviceToDevice, stream_.get()));
      filled += n;
    }
    return stream_.Synchronize();
  }

  absl::StatusOr<float> LastStepMs() const override {
    if (!options_.time_steps || !timed_step_) {
      return absl::FailedPreconditionError("no timed step (set CudaBackendOptions::time_steps)");
    }
    return stop_.ElapsedMsSince(start_);
  }

 private:
  // Reads tensors (converted to the compute dtype) back to back into one device buffer: fused
  // q|k|v and gate|up come out of this.
  absl::Status Upload(const WeightSource& src,
                      std::initializer_list<std::pair<std::string, std::vector<int64_t>>> parts,
                      Buffer16* dst) {
    size_t total = 0;
    for (const auto& [name, shape] : parts) {
      int64_t n = 1;
      for (int64_t d : shape) n *= d;
      total += static_cast<size_t>(n);
    }
    staging_.resize(total);
    size_t at = 0;
    for (const auto& [name, shape] : parts) {
      int64_t n = 1;
      for (int64_t d : shape) n *= d;
      auto bytes = std::as_writable_bytes(std::span<uint16_t>(staging_.data() + at, n));
      if (absl::Status s = src.Read(name, shape, options_.dtype, bytes); !s.ok()) return s;
      at += static_cast<size_t>(n);
    }
    auto buffer = Buffer16::Allocate(total);
    if (!buffer.ok()) return buffer.status();
    *dst = std::move(*buffer);
    return dst->CopyFrom(std::span<const uint16_t>(staging_.data(), total));
  }

  absl::Status LoadWeights(const WeightSource& src) {
    const ModelConfig& c = config_;
    const int64_t h = c.hidden_size, qw = c.q_width(), kvw = c.kv_width(),
                  inter = c.intermediate_size;
    if (absl::Status s = ValidateLlamaWeights(c, src); !s.ok()) return s;
    absl::Status s = Upload(src, {{"model.embed_tokens.weight", {c.vocab_size, h}}}, &embed_);
    if (s.ok()) s = Upload(src, {{"model.norm.weight", {h}}}, &final_norm_);
    if (s.ok() && !c.tie_word_embeddings) {
      s = Upload(src, {{"lm_head.weight", {c.vocab_size, h}}}, &lm_head_);
    }
    layers_.resize(c.num_layers);
    for (int l = 0; l < c.num_layers && s.ok(); ++l) {
      const std::string p = absl::StrCat("model.layers.", l, ".");
      LayerWeights& w = layers_[l];
      s = Upload(src, {{p + "input_layernorm.weight", {h}}}, &w.input_norm);
      if (s.ok()) {
        s = Upload(src,
                   {{p + "self_attn.q_proj.weight", {qw, h}},
                    {p + "self_attn.k_proj.weight", {kvw, h}},
                    {p + "self_attn.v_proj.weight", {kvw, h}}},
                   &w.wqkv);
      }
      if (s.ok()) s = Upload(src, {{p + "self_attn.o_proj.weight", {h, qw}}}, &w.wo);
      if (s.ok()) s = Upload(src, {{p + "post_attention_layernorm.weight", {h}}}, &w.post_norm);
      if (s.ok()) {
        s = Upload(
            src, {{p + "mlp.gate_proj.weight", {inter, h}}, {p + "mlp.up_proj.weight", {inter, h}}},
            &w.w_gate_up);
      }
      if (s.ok()) s = Upload(src, {{p + "mlp.down_proj.weight", {h, inter}}}, &w.w_down);
    }
    staging_ = {};
    return s;
  }

  // The KV arena: per layer either dense K and V pools or the SALS storage, each region
  // 256-byte aligned; ComputeKvBytes' accounting (per token slot, and exact rows per sequence
  // slot), except that a SALS rank is stored rounded up to a multiple of 8 (zero basis columns;
  // the kernels read latents 16 bytes at a time). The SALS bases are a separate buffer.
  absl::Status AllocateKv() {
    const ModelConfig& c = config_;
    const int64_t slots = static_cast<int64_t>(pool_.num_blocks) * pool_.block_size;
    const int64_t width = c.kv_width();
    const KvCacheFormat& format = pool_.format;
    num_sparse_ = format.NumSparseLayers();
    layer_kv_.assign(c.num_layers, LayerKv{});
    size_t at = 0;
    auto take = [&at](int64_t bytes) {
      const size_t offset = at;
      at = RoundUp(at + static_cast<size_t>(bytes), 256);
      return offset;
    };
    struct Offsets {
      size_t k = 0, v = 0, latent = 0, codes = 0, scale_zero = 0, exact_k = 0, exact_v = 0;
    };
    std::vector<Offsets> off(c.num_layers);
    kn::SalsKvCache shape;
    if (num_sparse_ > 0) {
      const SalsStorage& s = *format.sals;
      shape.num_kv_heads = c.num_kv_heads;
      shape.head_dim = c.head_dim;
      shape.block_size = pool_.block_size;
      shape.rank = static_cast<int>(RoundUp(s.rank, 8));
      shape.basis_stride = shape.rank;
      shape.value_bits = s.values.bits;
      shape.value_group_size = s.values.group_size;
      shape.sink_tokens = s.sink_tokens;
      shape.recent_tokens = s.recent_tokens;
    }
    const int64_t code_bytes =
        shape.value_bits == 16 ? width * 2 : width * shape.value_bits / 8;  // bits 16: fp16 values
    const int64_t exact = static_cast<int64_t>(pool_.max_sequences) * shape.exact_rows() * width;
    for (int l = 0; l < c.num_layers; ++l) {
      if (format.IsDense(l)) {
        off[l].k = take(slots * width * 2);
        off[l].v = take(slots * width * 2);
      } else {
        off[l].latent = take(slots * shape.rank * 2);
        off[l].codes = take(slots * code_bytes);
        off[l].scale_zero = take(slots * shape.groups() * 4);
        off[l].exact_k = take(exact * 2);
        off[l].exact_v = take(exact * 2);
      }
    }
    auto arena = DeviceBuffer<uint8_t>::Allocate(std::max<size_t>(at, 256));
    if (!arena.ok()) return arena.status();
    kv_arena_ = std::move(*arena);
    // Never-written slots read as zeros, not as whatever the allocator left.
    SALS_CUDA_RETURN_IF_ERROR(cudaMemset(kv_arena_.get(), 0, kv_arena_.bytes()));

    if (num_sparse_ > 0) {
      // Bases: the stored rank's leading columns of each sparse layer's U, fp16, zero padded.
      const SalsBasis& basis = options_.sals_basis;
      const size_t per_layer = static_cast<size_t>(width) * shape.rank;
      std::vector<uint16_t> host(per_layer * c.num_layers, 0);
      for (int l = 0; l < c.num_layers; ++l) {
        if (format.IsDense(l)) continue;
        const std::vector<float>& u = basis.layers[l];
        for (int64_t i = 0; i < width; ++i) {
          for (int j = 0; j < format.sals->rank; ++j) {
            host[l * per_layer + i * shape.rank + j] = F32ToF16(u[i * basis.rank + j]);
          }
        }
      }
      auto d_basis = DeviceBuffer<__half>::Allocate(host.size());
      if (!d_basis.ok()) return d_basis.status();
      basis_ = std::move(*d_basis);
      SALS_CUDA_RETURN_IF_ERROR(cudaMemcpy(basis_.get(), host.data(),
                                           host.size() * sizeof(uint16_t), cudaMemcpyHostToDevice));
    }
    uint8_t* base = kv_arena_.get();
    for (int l = 0; l < c.num_layers; ++l) {
      LayerKv& kv = layer_kv_[l];
      kv.dense = format.IsDense(l);
      if (kv.dense) {
        kv.k = reinterpret_cast<__half*>(base + off[l].k);
        kv.v = reinterpret_cast<__half*>(base + off[l].v);
        continue;
      }
      kv.sals = shape;
      kv.sals.latent = reinterpret_cast<__half*>(base + off[l].latent);
      kv.sals.value_codes = base + off[l].codes;
      kv.sals.value_scale_zero = reinterpret_cast<__half2*>(base + off[l].scale_zero);
      kv.sals.exact_k = reinterpret_cast<__half*>(base + off[l].exact_k);
      kv.sals.exact_v = reinterpret_cast<__half*>(base + off[l].exact_v);
      kv.sals.basis = basis_.get() + static_cast<size_t>(l) * width * shape.rank;
      if (absl::Status s = kn::ValidateSalsKvCache(kv.sals); !s.ok()) return s;
    }
    return absl::OkStatus();
  }

  // A dense layer's pool seen from the sequences of device order [first_seq, ...).
  kn::PagedKvCache KvCache(int layer, int first_seq, int64_t table_stride) const {
    kn::PagedKvCache cache = DenseView(layer_kv_[layer].k, first_seq, table_stride);
    cache.v = layer_kv_[layer].v;
    return cache;
  }

  kn::PagedKvCache DenseView(const void* k, int first_seq, int64_t table_stride) const {
    const uint8_t* meta = meta_.get();
    kn::PagedKvCache cache;
    cache.k = static_cast<const __half*>(k);
    cache.v = cache.k;
    cache.block_tables = reinterpret_cast<const int32_t*>(meta + plan_.meta.tables) +
                         static_cast<int64_t>(first_seq) * table_stride;
    cache.block_table_stride = table_stride;
    cache.kv_lens = reinterpret_cast<const int32_t*>(meta + plan_.meta.kv_lens) + first_seq;
    cache.block_size = pool_.block_size;
    cache.num_kv_heads = config_.num_kv_heads;
    cache.head_dim = config_.head_dim;
    return cache;
  }

  // A SALS layer's storage seen from the sequences of device order [first_seq, ...).
  kn::SalsKvCache SalsView(int layer, int first_seq) const {
    const uint8_t* meta = meta_.get();
    kn::SalsKvCache cache = layer_kv_[layer].sals;
    cache.block_tables = reinterpret_cast<const int32_t*>(meta + plan_.meta.tables) +
                         static_cast<int64_t>(first_seq) * plan_.table_stride;
    cache.block_table_stride = plan_.table_stride;
    cache.kv_lens = reinterpret_cast<const int32_t*>(meta + plan_.meta.cached) + first_seq;
    cache.exact_slots = reinterpret_cast<const int32_t*>(meta + plan_.meta.exact_slots) + first_seq;
    cache.exact_valid_from =
        reinterpret_cast<const int32_t*>(meta + plan_.meta.exact_valid) + first_seq;
    return cache;
  }

  // The scratch pool (materialized SALS rows plus new tokens) from sequence first_seq on.
  kn::PagedKvCache ScratchView(int first_seq) const {
    const uint8_t* meta = meta_.get();
    kn::PagedKvCache cache;
    cache.k = scratch_k_.get();
    cache.v = scratch_v_.get();
    cache.block_tables = reinterpret_cast<const int32_t*>(meta + plan_.meta.scratch_tables) +
                         static_cast<int64_t>(first_seq) * plan_.scratch_stride;
    cache.block_table_stride = plan_.scratch_stride;
    cache.kv_lens = reinterpret_cast<const int32_t*>(meta + plan_.meta.scratch_lens) + first_seq;
    cache.block_size = kScratchBlock;
    cache.num_kv_heads = config_.num_kv_heads;
    cache.head_dim = config_.head_dim;
    return cache;
  }

  // A SALS layer's storage (any, for planning: shapes only).
  kn::SalsKvCache AnySalsLayer() const {
    for (const LayerKv& kv : layer_kv_) {
      if (!kv.dense) return kv.sals;
    }
    return {};
  }

  int FirstSparseLayer() const {
    for (int l = 0; l < config_.num_layers; ++l) {
      if (!layer_kv_[l].dense) return l;
    }
    return -1;
  }

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
    if (absl::Status s = PlanStep(batch, greedy, row_begin); !s.ok()) return s;
    if (options_.time_steps) {
      if (absl::Status s = start_.Record(stream_.get()); !s.ok()) return s;
    }
    SALS_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(meta_.get(), meta_host_.get(), plan_.meta.bytes,
                                              cudaMemcpyHostToDevice, stream_.get()));
    if (plan_.tokens == 0) return absl::OkStatus();
    if (!plan_.graph) return Enqueue(greedy);

    const std::vector<int64_t> key = GraphKey();
    if (auto it = graphs_.find(key); it != graphs_.end()) return it->second.Launch(stream_.get());
    // First sight of this shape: run it eagerly (which also loads every kernel it uses and lets
    // cuBLAS set up for the stream), then capture the same launches for the next steps.
    if (absl::Status s = Enqueue(/*argmax=*/true); !s.ok()) return s;
    if (graphs_.size() >= kMaxCachedGraphs) graphs_.clear();
    SALS_CUDA_RETURN_IF_ERROR(
        cudaStreamBeginCapture(stream_.get(), cudaStreamCaptureModeThreadLocal));
    const absl::Status enqueued = Enqueue(/*argmax=*/true);
    cudaGraph_t raw = nullptr;
    const cudaError_t ended = cudaStreamEndCapture(stream_.get(), &raw);
    const cuda::Graph graph(raw);
    if (!enqueued.ok()) return enqueued;
    SALS_CUDA_RETURN_IF_ERROR(ended);
    auto exec = cuda::GraphExec::Instantiate(graph);
    if (!exec.ok()) return exec.status();
    graphs_.emplace(key, std::move(*exec));
    return absl::OkStatus();
  }

  // Everything a captured decode step's launches depend on besides the metadata (which is
  // uploaded to the same buffer every step) and the buffers (whose moves drop every graph).
  std::vector<int64_t> GraphKey() const {
    const StepPlan& p = plan_;
    std::vector<int64_t> key = {p.tokens, p.table_stride, p.decode.num_splits,
                                p.decode.tokens_per_split};
    for (const SalsGroup& g : p.groups) {
      const kn::SalsSelectionPolicy& q = g.policy;
      const kn::SalsDecodePlan& s = g.plan;
      key.insert(key.end(), {g.begin,
                             g.count,
                             q.rank,
                             q.score_dims,
                             std::bit_cast<int64_t>(q.topk_fraction),
                             q.token_budget,
                             q.select_all,
                             q.sink_tokens,
                             q.recent_tokens,
                             g.planned_cached,
                             g.fast,
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
                             g.dense.tokens_per_split,
                             g.max_rows,
                             p.scratch_stride});
    }
    return key;
  }

  absl::Status FinishStep() {
    if (options_.time_steps) {
      if (absl::Status s = stop_.Record(stream_.get()); !s.ok()) return s;
    }
    if (absl::Status s = stream_.Synchronize(); !s.ok()) return s;
    timed_step_ = options_.time_steps;
    return absl::OkStatus();
  }

  // Plans a SALS decode group: SalsDecodeAttention where its kernels take the shape, else the
  // fallback (its stages 1-3, then materialized rows and the dense decode kernel).
  absl::Status PlanSalsGroup(SalsGroup* g, int layer) {
    const SalsStorage& storage = *pool_.format.sals;
    const kn::SalsKvCache view = SalsView(layer, g->begin);
    // The stored rank is padded to view.rank with zero basis columns: a policy of the whole
    // stored rank rebuilds identically from the padded one.
    kn::SalsSelectionPolicy kernel_policy = g->policy;
    if (kernel_policy.rank == storage.rank) kernel_policy.rank = view.rank;
    const int hd = config_.head_dim, gs = storage.values.group_size;
    const int group = config_.group_size();
    const bool shape_ok =
        (hd == 64 || hd == 128) && (group == 1 || group == 2 || group == 4 || group == 8) &&
        kernel_policy.rank % 8 == 0 &&
        (storage.values.bits == 16 || (gs % 8 == 0 && (hd % gs == 0 || gs % hd == 0)));
    if (shape_ok) {
      auto plan =
          kn::PlanSalsDecode(view, kernel_policy, g->count, config_.num_heads, g->planned_cached);
      if (plan.ok()) {
        g->fast = true;
        g->policy = kernel_policy;
        g->plan = *plan;
        return absl::OkStatus();
      }
    }
    g->fast = false;
    g->stage_policy = g->policy;
    g->stage_policy.rank = view.rank;  // stages 1-3 only score (score_dims); any valid rank
    const kn::SalsSelection sel = kn::SalsPlanSelection(g->policy, g->planned_cached);
    kn::SalsDecodePlan plan;
    plan.batch = g->count;
    plan.num_heads = config_.num_heads;
    plan.max_cached = g->planned_cached;
    plan.max_middle = std::max(1, sel.middle());
    plan.max_topk = std::max(1, sel.topk);
    plan.score_stride = static_cast<int>(RoundUp(g->policy.score_dims, 8));
    plan.score_block_tokens = 64;
    plan.topk_cluster = kn::SalsTopKClusterFor(plan.max_middle);
    g->plan = plan;
    g->max_rows = sel.attended(g->planned_cached);
    return absl::OkStatus();
  }

  // Host side of a step: device order, padding, the metadata in pinned memory, buffer sizes.
  absl::Status PlanStep(const ForwardBatch& batch, bool greedy, std::vector<int32_t>* row_begin) {
    const int num_seqs = static_cast<int>(batch.seqs.size());
    const int bs = pool_.block_size;
    const bool sals = num_sparse_ > 0;
    std::vector<int64_t> first_token(num_seqs);
    int64_t max_blocks = 1;
    int max_decode_kv = 0;
    int max_q_len = 0;
    int max_context = 0;
    // Device order: one-token slices first, grouped by SALS policy in order of first appearance,
    // then the prefill chunks.
    std::vector<kn::SalsSelectionPolicy> policies(sals ? num_seqs : 0);
    std::vector<std::vector<int>> group_members;
    std::vector<kn::SalsSelectionPolicy> group_policy;
    for (int s = 0, t = 0; s < num_seqs; ++s) {
      const SequenceSlice& seq = batch.seqs[s];
      first_token[s] = t;
      t += seq.num_tokens;
      max_blocks = std::max<int64_t>(max_blocks, (seq.context_len + seq.num_tokens + bs - 1) / bs);
      if (sals) policies[s] = KernelPolicy(seq.policy.Resolved(*pool_.format.sals));
      if (seq.num_tokens == 1) {
        max_decode_kv = std::max(max_decode_kv, seq.context_len + 1);
        size_t g = 0;
        while (g < group_policy.size() && !(sals && SamePolicy(group_policy[g], policies[s]))) ++g;
        if (g == group_policy.size() && (sals || group_policy.empty())) {
          group_policy.push_back(sals ? policies[s] : kn::SalsSelectionPolicy{});
          group_members.emplace_back();
        }
        group_members[sals ? g : 0].push_back(s);
      } else {
        max_q_len = std::max(max_q_len, seq.num_tokens);
        max_context = std::max(max_context, seq.context_len);
      }
    }
    std::vector<int> order;
    for (const std::vector<int>& members : group_members) {
      order.insert(order.end(), members.begin(), members.end());
    }
    const int num_decode = static_cast<int>(order.size());
    for (int s = 0; s < num_seqs; ++s) {
      if (batch.seqs[s].num_tokens > 1) order.push_back(s);
    }
    row_begin->resize(num_seqs);
    int out_rows = 0;
    for (int s = 0; s < num_seqs; ++s) {
      (*row_begin)[s] = out_rows;
      out_rows += greedy || !batch.seqs[s].all_logits ? 1 : batch.seqs[s].num_tokens;
    }

    StepPlan p;
    p.prefill_seqs = num_seqs - num_decode;
    p.max_q_len = max_q_len;
    p.out_rows = out_rows;
    p.max_context = max_context;
    // Graphs bake each SALS group's policy in: one group only (the usual case).
    p.graph = options_.cuda_graphs && p.prefill_seqs == 0 && num_decode > 0 &&
              num_decode <= options_.max_graph_batch && (!sals || group_members.size() == 1);
    int planned_kv = max_decode_kv;
    if (p.graph) {
      p.decode_seqs = GraphBatch(num_decode);
      p.tokens = p.rows = p.decode_seqs;
      p.table_stride = static_cast<int64_t>(std::bit_ceil(static_cast<uint64_t>(max_blocks)));
      planned_kv = KvBucket(max_decode_kv);
    } else {
      p.decode_seqs = num_decode;
      p.tokens = static_cast<int64_t>(batch.tokens.size());
      p.rows = out_rows;
      p.table_stride = max_blocks;
    }
    const int padded_seqs = p.decode_seqs + p.prefill_seqs;

    // SALS groups and the scratch rows: per fallback decode slice its attended tokens, per
    // prefill chunk its context and new tokens, each rounded to whole scratch blocks.
    std::vector<int64_t> scratch_begin(padded_seqs, 0), scratch_len(padded_seqs, 0);
    step_attended_ = step_cached_ = 0;
    if (sals) {
      for (size_t g = 0, at = 0; g < group_members.size(); ++g) {
        SalsGroup group;
        group.begin = static_cast<int>(at);
        group.count = static_cast<int>(group_members[g].size());
        group.policy = group_policy[g];
        int max_cached = 0;
        for (int s : group_members[g]) {
          max_cached = std::max(max_cached, batch.seqs[s].context_len);
          const kn::SalsSelection sel =
              kn::SalsPlanSelection(group.policy, batch.seqs[s].context_len);
          step_attended_ +=
              static_cast<int64_t>(sel.attended(batch.seqs[s].context_len) - 1) * num_sparse_;
          step_cached_ += static_cast<int64_t>(batch.seqs[s].context_len) * num_sparse_;
        }
        if (p.graph) group.count = p.decode_seqs;  // padding slices join the (only) group
        group.planned_cached = p.graph ? KvBucket(max_cached) : max_cached;
        at += group_members[g].size();
        p.groups.push_back(group);
      }
    }
    int64_t scratch_blocks = 1;
    p.meta = LayoutMeta(p.tokens, padded_seqs, p.prefill_seqs, p.table_stride, p.rows, sals, 1);
    plan_ = p;  // the views below read the layout
    if (sals) {
      const int layer = FirstSparseLayer();
      for (SalsGroup& g : plan_.groups) {
        if (absl::Status s = PlanSalsGroup(&g, layer); !s.ok()) return s;
        if (g.fast) continue;
        const int64_t stride_blocks = CeilDiv(g.max_rows, kScratchBlock);
        scratch_blocks = std::max(scratch_blocks, stride_blocks);
      }
      for (int i = 0; i < p.prefill_seqs; ++i) {
        const SequenceSlice& seq = batch.seqs[order[num_decode + i]];
        scratch_blocks = std::max<int64_t>(
            scratch_blocks, CeilDiv(seq.context_len + seq.num_tokens, kScratchBlock));
      }
      // Rows per device-order sequence.
      int64_t rows = 0;
      for (const SalsGroup& g : plan_.groups) {
        for (int i = g.begin; i < g.begin + g.count; ++i) {
          scratch_begin[i] = rows;
          if (g.fast) continue;
          const int cached = i < num_decode ? batch.seqs[order[i]].context_len : 0;
          scratch_len[i] =
              i < num_decode ? kn::SalsPlanSelection(g.policy, cached).attended(cached) : 0;
          rows += RoundUp(p.graph ? g.max_rows : scratch_len[i], kScratchBlock);
        }
      }
      for (int i = p.decode_seqs; i < padded_seqs; ++i) {
        const SequenceSlice& seq = batch.seqs[order[i]];
        scratch_begin[i] = rows;
        scratch_len[i] = seq.context_len + seq.num_tokens;
        rows += RoundUp(scratch_len[i], kScratchBlock);
      }
      plan_.scratch_rows = rows;
      plan_.scratch_stride = scratch_blocks;
      plan_.meta = LayoutMeta(p.tokens, padded_seqs, p.prefill_seqs, p.table_stride, p.rows, true,
                              scratch_blocks);
    }
    if (plan_.decode_seqs > 0) {
      auto plan = kn::PlanDecodeAttention(kdtype_, DenseView(kv_arena_.get(), 0, p.table_stride),
                                          plan_.decode_seqs, config_.num_heads, planned_kv);
      if (!plan.ok()) return plan.status();
      plan_.decode = *plan;
    }
    size_t decode_workspace = kn::DecodeAttentionWorkspaceBytes(
        plan_.decode, plan_.decode_seqs, config_.num_heads, config_.head_dim);
    if (sals) {
      const int layer = FirstSparseLayer();
      for (SalsGroup& g : plan_.groups) {
        plan_.sals_workspace = std::max(
            plan_.sals_workspace, kn::SalsDecodeWorkspace(SalsView(layer, g.begin), g.plan).bytes);
        if (g.fast) continue;
        // Planned before Reserve sizes the scratch pool: any non-null pool pointer will do.
        kn::PagedKvCache scratch = ScratchView(g.begin);
        scratch.k = scratch.v = reinterpret_cast<const __half*>(kv_arena_.get());
        auto dense =
            kn::PlanDecodeAttention(kdtype_, scratch, g.count, config_.num_heads, g.max_rows);
        if (!dense.ok()) return dense.status();
        g.dense = *dense;
        decode_workspace =
            std::max(decode_workspace, kn::DecodeAttentionWorkspaceBytes(
                                           g.dense, g.count, config_.num_heads, config_.head_dim));
      }
    }
    if (absl::Status s = Reserve(decode_workspace); !s.ok()) return s;

    // The metadata, in device order (graph padding follows the decode slices; a step with
    // prefill chunks has none, so a sequence's device index is its index in `order`).
    const StepPlan& q = plan_;
    uint8_t* base = meta_host_.get();
    auto* slots = reinterpret_cast<int64_t*>(base + q.meta.slots);
    auto* tokens = reinterpret_cast<int32_t*>(base + q.meta.tokens);
    auto* positions = reinterpret_cast<int32_t*>(base + q.meta.positions);
    auto* kv_lens = reinterpret_cast<int32_t*>(base + q.meta.kv_lens);
    auto* q_starts = reinterpret_cast<int32_t*>(base + q.meta.q_starts);
    auto* tables = reinterpret_cast<int32_t*>(base + q.meta.tables);
    auto* rows = reinterpret_cast<int32_t*>(base + q.meta.rows);
    std::vector<int64_t> device_row(num_seqs);  // each sequence's first token row on the device
    std::vector<int64_t> first_row(order.size());
    int64_t t = 0;
    q_starts[0] = 0;
    for (int i = 0; i < static_cast<int>(order.size()); ++i) {
      const SequenceSlice& seq = batch.seqs[order[i]];
      device_row[order[i]] = first_row[i] = t;
      for (int j = 0; j < seq.num_tokens; ++j, ++t) {
        const int pos = seq.context_len + j;
        tokens[t] = batch.tokens[first_token[order[i]] + j];
        positions[t] = pos;
        slots[t] = static_cast<int64_t>(seq.block_table[pos / bs]) * bs + pos % bs;
      }
      kv_lens[i] = seq.context_len + seq.num_tokens;
      const int64_t blocks = (seq.context_len + seq.num_tokens + bs - 1) / bs;
      int32_t* table = tables + static_cast<int64_t>(i) * q.table_stride;
      std::copy_n(seq.block_table.begin(), blocks, table);
      std::fill(table + blocks, table + q.table_stride, 0);
      if (i >= num_decode) {
        q_starts[i - num_decode + 1] = q_starts[i - num_decode] + seq.num_tokens;
      }
    }
    // Graph padding: empty contexts (the kernel gives zeros) whose K/V is not stored.
    for (int i = num_decode; i < q.decode_seqs; ++i, ++t) {
      tokens[t] = 0;
      positions[t] = 0;
      slots[t] = -1;
      kv_lens[i] = 0;
      std::fill_n(tables + static_cast<int64_t>(i) * q.table_stride, q.table_stride, 0);
    }
    if (sals) FillSalsMeta(batch, order, first_row, scratch_begin, scratch_len);
    int r = 0;
    for (int s = 0; s < num_seqs; ++s) {
      const SequenceSlice& seq = batch.seqs[s];
      if (greedy || !seq.all_logits) {
        rows[r++] = static_cast<int32_t>(device_row[s] + seq.num_tokens - 1);
      } else {
        for (int j = 0; j < seq.num_tokens; ++j)
          rows[r++] = static_cast<int32_t>(device_row[s] + j);
      }
    }
    for (; r < q.rows; ++r) rows[r] = r;  // padding rows of a decode graph
    return absl::OkStatus();
  }

  // The SALS part of the metadata (plan_ final, the rest of the metadata written). Device index
  // i < order.size() is order[i] (first token row first_row[i]); the rest is graph padding.
  void FillSalsMeta(const ForwardBatch& batch, const std::vector<int>& order,
                    const std::vector<int64_t>& first_row,
                    const std::vector<int64_t>& scratch_begin,
                    const std::vector<int64_t>& scratch_len) {
    const StepPlan& q = plan_;
    const SalsStorage& storage = *pool_.format.sals;
    const int64_t exact_rows = storage.sink_tokens + storage.recent_tokens;
    uint8_t* base = meta_host_.get();
    auto* cached = reinterpret_cast<int32_t*>(base + q.meta.cached);
    auto* exact_slots = reinterpret_cast<int32_t*>(base + q.meta.exact_slots);
    auto* exact_valid = reinterpret_cast<int32_t*>(base + q.meta.exact_valid);
    auto* mat_rows = reinterpret_cast<int32_t*>(base + q.meta.mat_rows);
    auto* mat_ranks = reinterpret_cast<int32_t*>(base + q.meta.mat_ranks);
    auto* scratch_lens = reinterpret_cast<int32_t*>(base + q.meta.scratch_lens);
    auto* scratch_tables = reinterpret_cast<int32_t*>(base + q.meta.scratch_tables);
    auto* exact_row = reinterpret_cast<int64_t*>(base + q.meta.exact_rows);
    auto* scratch_slot = reinterpret_cast<int64_t*>(base + q.meta.scratch_slots);
    const int padded_seqs = q.decode_seqs + q.prefill_seqs;
    std::fill_n(exact_row, q.tokens, -1);
    std::fill_n(scratch_slot, q.tokens, -1);
    for (int d = 0; d < padded_seqs; ++d) {
      int32_t* table = scratch_tables + static_cast<int64_t>(d) * q.scratch_stride;
      for (int64_t b = 0; b < q.scratch_stride; ++b) {
        table[b] = static_cast<int32_t>(scratch_begin[d] / kScratchBlock + b);
      }
      mat_rows[d] = static_cast<int32_t>(scratch_begin[d]);
      scratch_lens[d] = static_cast<int32_t>(scratch_len[d]);
      if (d >= static_cast<int>(order.size())) {  // padding
        cached[d] = 0;
        exact_slots[d] = 0;
        exact_valid[d] = 0;
        mat_ranks[d] = 1;
        continue;
      }
      const SequenceSlice& seq = batch.seqs[order[d]];
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
        if (scratch_len[d] > 0) {
          scratch_slot[t + j] =
              d < q.decode_seqs ? scratch_begin[d] + scratch_len[d] - 1 : scratch_begin[d] + pos;
        }
      }
    }
  }

  // Sizes every device buffer for plan_; any move drops the captured graphs (they hold pointers).
  absl::Status Reserve(size_t decode_workspace) {
    const ModelConfig& c = config_;
    const size_t t = static_cast<size_t>(plan_.tokens);
    const size_t rows = static_cast<size_t>(plan_.rows);
    bool moved = false;
    auto grow = [&moved]<typename T>(DeviceBuffer<T>* buf, size_t count) -> absl::Status {
      absl::StatusOr<bool> g = Grow(buf, count);
      if (!g.ok()) return g.status();
      moved |= *g;
      return absl::OkStatus();
    };
    const size_t row = c.q_width() + 2 * static_cast<size_t>(c.kv_width());
    const size_t scratch = static_cast<size_t>(plan_.scratch_rows) * c.kv_width();
    for (const absl::Status& s :
         {grow(&act_.residual, t * c.hidden_size), grow(&act_.xn, t * c.hidden_size),
          grow(&act_.qkv, t * row), grow(&act_.attn, t * c.q_width()),
          grow(&act_.gate_up, t * 2 * c.intermediate_size),
          grow(&act_.act, t * c.intermediate_size), grow(&act_.proj, t * c.hidden_size),
          grow(&selected_, rows * c.hidden_size), grow(&logits_, rows * c.vocab_size),
          grow(&argmax_, rows), grow(&meta_, plan_.meta.bytes),
          grow(&decode_workspace_, decode_workspace),
          grow(&qkv_pre_, num_sparse_ > 0 ? plan_.decode_seqs * row : 0),
          grow(&sals_workspace_, plan_.sals_workspace), grow(&scratch_k_, scratch),
          grow(&scratch_v_, scratch)}) {
      if (!s.ok()) return s;
    }
    if (moved) graphs_.clear();
    if (meta_host_.size() < plan_.meta.bytes) {
      auto pinned = cuda::PinnedBuffer<uint8_t>::Allocate(std::bit_ceil(plan_.meta.bytes));
      if (!pinned.ok()) return pinned.status();
      meta_host_ = std::move(*pinned);
    }
    return absl::OkStatus();
  }

  // y[t, n] = x[t, k] . w[n, k]^T (row-major; cuBLAS sees the column-major transpose).
  absl::Status Gemm(const void* x, const void* w, int64_t t, int n, int k, void* y,
                    cudaDataType_t y_type) {
    const float alpha = 1.0f, beta = 0.0f;
    const cudaDataType_t ab = CublasDType(options_.dtype);
    SALS_CUBLAS_RETURN_IF_ERROR(cublasGemmEx(
        cublas_.get(), CUBLAS_OP_T, CUBLAS_OP_N, n, static_cast<int>(t), k, &alpha, w, ab, k, x, ab,
        k, &beta, y, y_type, n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    return absl::OkStatus();
  }

  // Attention of a dense layer: new K/V into the paged pool, then decode and prefill kernels.
  absl::Status DenseAttention(int l, uint16_t* qkv, uint16_t* attn) {
    const ModelConfig& c = config_;
    const StepPlan& p = plan_;
    const cudaStream_t st = stream_.get();
    const int qw = c.q_width(), kvw = c.kv_width(), row = qw + 2 * kvw;
    const float scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
    const uint8_t* meta = meta_.get();
    const auto* slots = reinterpret_cast<const int64_t*>(meta + p.meta.slots);
    const auto* q_starts = reinterpret_cast<const int32_t*>(meta + p.meta.q_starts);
    const LayerKv& kv = layer_kv_[l];
    SALS_KERNELS_RETURN_IF_ERROR(kn::WriteKvCache(kdtype_, qkv + qw, qkv + qw + kvw, row, p.tokens,
                                                  c.num_kv_heads, c.head_dim, slots, kv.k, kv.v,
                                                  st));
    if (p.decode_seqs > 0) {
      SALS_KERNELS_RETURN_IF_ERROR(
          kn::DecodeAttention(kdtype_, KvCache(l, 0, p.table_stride), p.decode_seqs, c.num_heads,
                              qkv, row, scale, p.decode, decode_workspace_.get(), attn, st));
    }
    if (p.prefill_seqs > 0) {
      const int64_t first = p.decode_seqs;  // decode slices hold one row each
      SALS_KERNELS_RETURN_IF_ERROR(kn::PrefillAttention(
          kdtype_, KvCache(l, p.decode_seqs, p.table_stride), p.prefill_seqs, c.num_heads,
          qkv + first * row, row, q_starts, p.max_q_len, scale, attn + first * qw, st));
    }
    return absl::OkStatus();
  }

  // Attention of a SALS layer, from the qkv rows before RoPE to the exact copies after it.
  absl::Status SalsAttention(int l, uint16_t* qkv, uint16_t* attn) {
    const ModelConfig& c = config_;
    const StepPlan& p = plan_;
    const cudaStream_t st = stream_.get();
    const kn::DType dt = kdtype_;
    const int qw = c.q_width(), kvw = c.kv_width(), row = qw + 2 * kvw;
    const float scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
    const uint8_t* meta = meta_.get();
    const auto* slots = reinterpret_cast<const int64_t*>(meta + p.meta.slots);
    const auto* positions = reinterpret_cast<const int32_t*>(meta + p.meta.positions);
    const auto* q_starts = reinterpret_cast<const int32_t*>(meta + p.meta.q_starts);
    const auto* mat_rows = reinterpret_cast<const int32_t*>(meta + p.meta.mat_rows);
    const auto* mat_ranks = reinterpret_cast<const int32_t*>(meta + p.meta.mat_ranks);
    const auto* exact_rows = reinterpret_cast<const int64_t*>(meta + p.meta.exact_rows);
    const auto* scratch_slots = reinterpret_cast<const int64_t*>(meta + p.meta.scratch_slots);
    const kn::SalsKvCache all = SalsView(l, 0);
    const int64_t t = p.tokens;

    // Before RoPE: the decode rows' pre-RoPE query (for the latent query), then every new
    // token's latent key and quantized value (the attention below never reads them: decode
    // slices attend to the new token from its qkv row, prefill chunks to their cached context).
    if (p.decode_seqs > 0) {
      SALS_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(
          qkv_pre_.get(), qkv, static_cast<size_t>(p.decode_seqs) * row * sizeof(uint16_t),
          cudaMemcpyDeviceToDevice, st));
    }
    SALS_KERNELS_RETURN_IF_ERROR(
        kn::SalsWriteLatentValues(dt, all, qkv + qw, qkv + qw + kvw, row, t, slots, st));
    SALS_KERNELS_RETURN_IF_ERROR(kn::ApplyRopeQk(dt, qkv, t, row, c.num_heads, c.num_kv_heads,
                                                 c.head_dim, positions, inv_freq_.get(), st));
    if (p.scratch_rows > 0) {
      SALS_KERNELS_RETURN_IF_ERROR(kn::WriteKvCache(dt, qkv + qw, qkv + qw + kvw, row, t,
                                                    c.num_kv_heads, c.head_dim, scratch_slots,
                                                    scratch_k_.get(), scratch_v_.get(), st));
    }
    for (const SalsGroup& g : p.groups) {
      const kn::SalsKvCache view = SalsView(l, g.begin);
      const uint16_t* q_pre = qkv_pre_.get() + static_cast<int64_t>(g.begin) * row;
      uint16_t* q = qkv + static_cast<int64_t>(g.begin) * row;
      uint16_t* out = attn + static_cast<int64_t>(g.begin) * qw;
      if (g.fast) {
        SALS_KERNELS_RETURN_IF_ERROR(kn::SalsDecodeAttention(
            dt, view, g.policy, g.plan, q_pre, q, row, q + qw, q + qw + kvw, row, inv_freq_.get(),
            scale, sals_workspace_.get(), out, st));
        continue;
      }
      const kn::SalsWorkspaceLayout ws = kn::SalsDecodeWorkspace(view, g.plan);
      uint8_t* base = sals_workspace_.get();
      auto* q_latent = reinterpret_cast<float*>(base + ws.q_latent);
      auto* scores = reinterpret_cast<float*>(base + ws.scores);
      auto* selected = reinterpret_cast<int32_t*>(base + ws.selected);
      SALS_KERNELS_RETURN_IF_ERROR(
          kn::SalsLatentQuery(dt, view, g.stage_policy, g.plan, q_pre, row,
                              reinterpret_cast<float*>(base + ws.q_partial), q_latent, st));
      SALS_KERNELS_RETURN_IF_ERROR(
          kn::SalsLatentScores(view, g.stage_policy, g.plan, q_latent, scores, st));
      SALS_KERNELS_RETURN_IF_ERROR(
          kn::SalsTopK(view, g.stage_policy, g.plan, scores, selected, st));
      SALS_KERNELS_RETURN_IF_ERROR(kn::SalsMaterializeSelection(
          view, g.policy, g.count, g.planned_cached, selected, g.plan.max_topk, mat_rows + g.begin,
          inv_freq_.get(), scratch_k_.get(), scratch_v_.get(), st));
      SALS_KERNELS_RETURN_IF_ERROR(kn::DecodeAttention(dt, ScratchView(g.begin), g.count,
                                                       c.num_heads, q, row, scale, g.dense,
                                                       decode_workspace_.get(), out, st));
    }
    if (p.prefill_seqs > 0) {
      const int first = p.decode_seqs;  // decode slices hold one row each
      if (p.max_context > 0) {
        SALS_KERNELS_RETURN_IF_ERROR(kn::SalsMaterializeContext(
            SalsView(l, first), p.prefill_seqs, p.max_context, mat_ranks + first, mat_rows + first,
            inv_freq_.get(), scratch_k_.get(), scratch_v_.get(), st));
      }
      SALS_KERNELS_RETURN_IF_ERROR(kn::PrefillAttention(
          dt, ScratchView(first), p.prefill_seqs, c.num_heads, qkv + int64_t{first} * row, row,
          q_starts, p.max_q_len, scale, attn + int64_t{first} * qw, st));
    }
    // After attention (which may still read the ring rows these overwrite).
    return kn::SalsWriteExact(dt, all, qkv + qw, qkv + qw + kvw, row, t, exact_rows, st);
  }

  // The device work of plan_, launches only (also what a graph captures).
  absl::Status Enqueue(bool argmax) {
    const ModelConfig& c = config_;
    const StepPlan& p = plan_;
    const cudaStream_t st = stream_.get();
    const kn::DType dt = kdtype_;
    const cudaDataType_t act_type = CublasDType(options_.dtype);
    const int h = c.hidden_size, qw = c.q_width(), kvw = c.kv_width(), row = qw + 2 * kvw;
    const int inter = c.intermediate_size;
    const float eps = static_cast<float>(c.rms_norm_eps);
    const uint8_t* meta = meta_.get();
    const auto* tokens = reinterpret_cast<const int32_t*>(meta + p.meta.tokens);
    const auto* positions = reinterpret_cast<const int32_t*>(meta + p.meta.positions);
    const auto* rows = reinterpret_cast<const int32_t*>(meta + p.meta.rows);
    uint16_t* residual = act_.residual.get();
    uint16_t* xn = act_.xn.get();
    uint16_t* qkv = act_.qkv.get();
    uint16_t* attn = act_.attn.get();
    uint16_t* proj = act_.proj.get();
    const int64_t t = p.tokens;

    SALS_KERNELS_RETURN_IF_ERROR(
        kn::EmbeddingGather(dt, embed_.get(), c.vocab_size, h, tokens, t, residual, st));
    for (int l = 0; l < c.num_layers; ++l) {
      const LayerWeights& w = layers_[l];
      // The previous layer's MLP output joins the residual stream here.
      SALS_KERNELS_RETURN_IF_ERROR(
          l == 0 ? kn::RmsNorm(dt, residual, w.input_norm.get(), t, h, eps, xn, st)
                 : kn::AddRmsNorm(dt, residual, proj, w.input_norm.get(), t, h, eps, xn, st));
      SALS_KERNELS_RETURN_IF_ERROR(Gemm(xn, w.wqkv.get(), t, row, h, qkv, act_type));
      if (layer_kv_[l].dense) {
        SALS_KERNELS_RETURN_IF_ERROR(kn::ApplyRopeQk(dt, qkv, t, row, c.num_heads, c.num_kv_heads,
                                                     c.head_dim, positions, inv_freq_.get(), st));
        SALS_KERNELS_RETURN_IF_ERROR(DenseAttention(l, qkv, attn));
      } else {
        SALS_KERNELS_RETURN_IF_ERROR(SalsAttention(l, qkv, attn));
      }
      SALS_KERNELS_RETURN_IF_ERROR(Gemm(attn, w.wo.get(), t, h, qw, proj, act_type));
      SALS_KERNELS_RETURN_IF_ERROR(
          kn::AddRmsNorm(dt, residual, proj, w.post_norm.get(), t, h, eps, xn, st));
      SALS_KERNELS_RETURN_IF_ERROR(
          Gemm(xn, w.w_gate_up.get(), t, 2 * inter, h, act_.gate_up.get(), act_type));
      SALS_KERNELS_RETURN_IF_ERROR(
          kn::SiluMul(dt, act_.gate_up.get(), t, inter, act_.act.get(), st));
      SALS_KERNELS_RETURN_IF_ERROR(
          Gemm(act_.act.get(), w.w_down.get(), t, h, inter, proj, act_type));
    }
    SALS_KERNELS_RETURN_IF_ERROR(
        kn::AddRmsNorm(dt, residual, proj, final_norm_.get(), t, h, eps, xn, st));
    // Only the requested rows go through the LM head (the row gather reuses the embedding one).
    SALS_KERNELS_RETURN_IF_ERROR(
        kn::EmbeddingGather(dt, xn, t, h, rows, p.rows, selected_.get(), st));
    const uint16_t* head = c.tie_word_embeddings ? embed_.get() : lm_head_.get();
    SALS_KERNELS_RETURN_IF_ERROR(
        Gemm(selected_.get(), head, p.rows, c.vocab_size, h, logits_.get(), CUDA_R_32F));
    if (argmax) {
      SALS_KERNELS_RETURN_IF_ERROR(
          kn::ArgmaxRows(kn::DType::kF32, logits_.get(), p.rows, c.vocab_size, argmax_.get(), st));
    }
    return absl::OkStatus();
  }

  const ModelConfig config_;
  const KvPoolConfig pool_;
  const CudaBackendOptions options_;
  const kn::DType kdtype_ = KernelDType(options_.dtype);

  kn::Stream stream_;
  DeviceBuffer<uint8_t> cublas_workspace_;  // outlives the handle that uses it
  cuda::CublasHandle cublas_;
  kn::Event start_, stop_;
  bool timed_step_ = false;

  Buffer16 embed_, final_norm_, lm_head_;
  std::vector<LayerWeights> layers_;
  std::vector<uint16_t> staging_;  // host side of weight uploads
  DeviceBuffer<float> inv_freq_;
  DeviceBuffer<uint8_t> kv_arena_;  // every layer's KV storage (LayerKv points into it)
  DeviceBuffer<__half> basis_;      // SALS bases, [layers x D x stored rank (padded)]
  std::vector<LayerKv> layer_kv_;
  int num_sparse_ = 0;

  StepPlan plan_;
  int64_t step_attended_ = 0, step_cached_ = 0;  // SALS selection statistics of the step
  Activations act_;
  Buffer16 selected_;
  Buffer16 qkv_pre_;  // SALS: the decode rows' q|k|v before RoPE
  DeviceBuffer<float> logits_;
  DeviceBuffer<int32_t> argmax_;
  // On-device sampling: the step's rows in the kernels' terms, and their results.
  std::vector<kn::SampleRowParams> sample_params_host_;
  std::vector<kn::PenaltyEntry> sample_penalties_host_;
  std::vector<kn::SampleRowResult> sample_results_host_;
  DeviceBuffer<kn::SampleRowParams> sample_params_;
  DeviceBuffer<kn::PenaltyEntry> sample_penalties_;
  DeviceBuffer<uint8_t> sample_workspace_;
  DeviceBuffer<kn::SampleRowResult> sample_results_;
  DeviceBuffer<uint8_t> meta_, decode_workspace_, sals_workspace_;
  DeviceBuffer<__half> scratch_k_, scratch_v_;  // SALS: materialized rows + new tokens' K/V
  cuda::PinnedBuffer<uint8_t> meta_host_;
  std::map<std::vector<int64_t>, cuda::GraphExec> graphs_;
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
