// The CUDA backend, dense path: fp16/bf16 weights and activations on one GPU, GEMMs through cuBLAS
// (fp32 accumulation), everything else through kernels/, a paged fp16 KV pool. A step's sequences
// are reordered on the device so that one-token slices come first (one decode-attention launch
// over them) and prefill chunks after (one prefill-attention launch); every other stage works on
// token rows and does not care about the order. Logit rows come back in the batch's own order.
#include "engine/backend/cuda/cuda_backend.h"

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <compare>
#include <cstring>
#include <initializer_list>
#include <map>
#include <memory>
#include <random>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/backend/batch_validation.h"
#include "engine/backend/cuda/cuda_resources.h"
#include "sals/kernels/attention.h"
#include "sals/kernels/cuda_utils.h"
#include "sals/kernels/elementwise.h"
#include "sals/kernels/paged_kv.h"

namespace sals {
namespace {

namespace kn = ::sals::kernels;
using kn::DeviceBuffer;

// Activations and weights: 16-bit words, f16 or bf16 as the options say.
using Buffer16 = DeviceBuffer<uint16_t>;

constexpr size_t kCublasWorkspaceBytes = size_t{32} << 20;  // cuBLAS's advice for Hopper
constexpr size_t kMaxCachedGraphs = 128;

kn::DType KernelDType(DType t) { return t == DType::kBF16 ? kn::DType::kBF16 : kn::DType::kF16; }
cudaDataType_t CublasDType(DType t) { return t == DType::kBF16 ? CUDA_R_16BF : CUDA_R_16F; }

size_t RoundUp(size_t x, size_t m) { return (x + m - 1) / m * m; }

// Padded batch of a graph-replayed decode step: powers of two up to 8, then multiples of 16.
int GraphBatch(int n) {
  return n <= 8 ? static_cast<int>(std::bit_ceil(static_cast<unsigned>(n)))
                : static_cast<int>(RoundUp(n, 16));
}

// Context length a graph's attention split is planned for: sixteen steps per octave (a plan made
// for a longer context is correct, at most a sixteenth slower), so that a growing sequence gets a
// new graph only every sixteenth of a doubling.
int KvBucket(int len) {
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

// Byte offsets of the per-step metadata inside one buffer (uploaded with one copy).
struct MetaLayout {
  size_t slots = 0;      // int64 [tokens]: flat KV slot of each token (-1: padding)
  size_t tokens = 0;     // int32 [tokens]
  size_t positions = 0;  // int32 [tokens]
  size_t kv_lens = 0;    // int32 [seqs]
  size_t q_starts = 0;   // int32 [prefill seqs + 1]
  size_t tables = 0;     // int32 [seqs x table_stride]
  size_t rows = 0;       // int32 [rows]: token row of each logits row
  size_t bytes = 0;
};

MetaLayout LayoutMeta(int64_t tokens, int64_t seqs, int64_t prefill_seqs, int64_t table_stride,
                      int64_t rows) {
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
  m.bytes = at;
  return m;
}

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
};

struct GraphKey {
  int batch;
  int64_t table_stride;
  int num_splits;
  int tokens_per_split;
  auto operator<=>(const GraphKey&) const = default;
};

struct LayerWeights {
  Buffer16 input_norm, wqkv, wo, post_norm, w_gate_up, w_down;
};

struct Activations {
  Buffer16 residual, xn, qkv, attn, gate_up, act, proj;
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

    layer_kv_elems_ = static_cast<size_t>(pool_.num_blocks) * pool_.block_size * config_.kv_width();
    auto kv = DeviceBuffer<__half>::Allocate(2 * config_.num_layers * layer_kv_elems_);
    if (!kv.ok()) return kv.status();
    kv_ = std::move(*kv);
    // Never-written slots read as zeros, not as whatever the allocator left.
    SALS_CUDA_RETURN_IF_ERROR(cudaMemset(kv_.get(), 0, kv_.bytes()));
    // Small initial metadata so that its pointers are never null (the attention planner checks).
    if (absl::StatusOr<bool> g = Grow(&meta_, 4096); !g.ok()) return g.status();

    // Refuse unsupported head shapes now rather than at the first step.
    auto plan = kn::PlanDecodeAttention(kdtype_, KvCache(0, 0, 1), 1, config_.num_heads, 1);
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
    if (absl::Status s = Step(batch, /*greedy=*/false, &out->row_begin); !s.ok()) return s;
    out->logits.resize(static_cast<size_t>(plan_.out_rows) * config_.vocab_size);
    SALS_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(out->logits.data(), logits_.get(),
                                              out->logits.size() * sizeof(float),
                                              cudaMemcpyDeviceToHost, stream_.get()));
    return FinishStep();
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
    // A random 32 MiB pattern, then doubling copies over the whole pool.
    const size_t total = kv_.size();
    std::vector<uint16_t> pattern(std::min<size_t>(total, size_t{16} << 20));
    std::mt19937_64 rng(seed);
    std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
    for (uint16_t& h : pattern) h = F32ToF16(dist(rng));
    // On the stream, so that the copies below see the pattern.
    SALS_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(kv_.get(), pattern.data(),
                                              pattern.size() * sizeof(uint16_t),
                                              cudaMemcpyHostToDevice, stream_.get()));
    for (size_t filled = pattern.size(); filled < total;) {
      const size_t n = std::min(filled, total - filled);
      SALS_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(kv_.get() + filled, kv_.get(), n * sizeof(__half),
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

  // Layer `layer`'s K pool; its V pool follows.
  __half* KPool(int layer) const {
    return kv_.get() + 2 * static_cast<size_t>(layer) * layer_kv_elems_;
  }

  // Layer `layer`'s pool seen from the sequences of device order [first_seq, ...).
  kn::PagedKvCache KvCache(int layer, int first_seq, int64_t table_stride) const {
    const uint8_t* meta = meta_.get();
    kn::PagedKvCache cache;
    cache.k = KPool(layer);
    cache.v = cache.k + layer_kv_elems_;
    cache.block_tables = reinterpret_cast<const int32_t*>(meta + plan_.meta.tables) +
                         static_cast<int64_t>(first_seq) * table_stride;
    cache.block_table_stride = table_stride;
    cache.kv_lens = reinterpret_cast<const int32_t*>(meta + plan_.meta.kv_lens) + first_seq;
    cache.block_size = pool_.block_size;
    cache.num_kv_heads = config_.num_kv_heads;
    cache.head_dim = config_.head_dim;
    return cache;
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

    const GraphKey key{static_cast<int>(plan_.tokens), plan_.table_stride, plan_.decode.num_splits,
                       plan_.decode.tokens_per_split};
    if (auto it = graphs_.find(key); it != graphs_.end()) return it->second.Launch(stream_.get());
    // First sight of this shape: run it eagerly (which also loads every kernel it uses), then
    // capture the same launches for the next steps.
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

  absl::Status FinishStep() {
    if (options_.time_steps) {
      if (absl::Status s = stop_.Record(stream_.get()); !s.ok()) return s;
    }
    if (absl::Status s = stream_.Synchronize(); !s.ok()) return s;
    timed_step_ = options_.time_steps;
    return absl::OkStatus();
  }

  // Host side of a step: device order, padding, the metadata in pinned memory, buffer sizes.
  absl::Status PlanStep(const ForwardBatch& batch, bool greedy, std::vector<int32_t>* row_begin) {
    const int num_seqs = static_cast<int>(batch.seqs.size());
    const int bs = pool_.block_size;
    std::vector<int> order;  // device order: one-token slices first
    std::vector<int64_t> first_token(num_seqs);
    int64_t max_blocks = 1;
    int max_decode_kv = 0;
    int max_q_len = 0;
    for (int s = 0, t = 0; s < num_seqs; ++s) {
      const SequenceSlice& seq = batch.seqs[s];
      first_token[s] = t;
      t += seq.num_tokens;
      max_blocks = std::max<int64_t>(max_blocks, (seq.context_len + seq.num_tokens + bs - 1) / bs);
      if (seq.num_tokens == 1) {
        order.push_back(s);
        max_decode_kv = std::max(max_decode_kv, seq.context_len + 1);
      } else {
        max_q_len = std::max(max_q_len, seq.num_tokens);
      }
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
    p.graph = options_.cuda_graphs && p.prefill_seqs == 0 && num_decode > 0 &&
              num_decode <= options_.max_graph_batch;
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
    p.meta = LayoutMeta(p.tokens, padded_seqs, p.prefill_seqs, p.table_stride, p.rows);
    plan_ = p;  // KvCache below reads the layout
    if (p.decode_seqs > 0) {
      auto plan = kn::PlanDecodeAttention(kdtype_, KvCache(0, 0, p.table_stride), p.decode_seqs,
                                          config_.num_heads, planned_kv);
      if (!plan.ok()) return plan.status();
      plan_.decode = *plan;
    }
    if (absl::Status s = Reserve(); !s.ok()) return s;

    // The metadata, in device order.
    uint8_t* base = meta_host_.get();
    auto* slots = reinterpret_cast<int64_t*>(base + p.meta.slots);
    auto* tokens = reinterpret_cast<int32_t*>(base + p.meta.tokens);
    auto* positions = reinterpret_cast<int32_t*>(base + p.meta.positions);
    auto* kv_lens = reinterpret_cast<int32_t*>(base + p.meta.kv_lens);
    auto* q_starts = reinterpret_cast<int32_t*>(base + p.meta.q_starts);
    auto* tables = reinterpret_cast<int32_t*>(base + p.meta.tables);
    auto* rows = reinterpret_cast<int32_t*>(base + p.meta.rows);
    std::vector<int64_t> device_row(num_seqs);  // each sequence's first token row on the device
    int64_t t = 0;
    q_starts[0] = 0;
    for (int i = 0; i < static_cast<int>(order.size()); ++i) {
      const SequenceSlice& seq = batch.seqs[order[i]];
      device_row[order[i]] = t;
      for (int j = 0; j < seq.num_tokens; ++j, ++t) {
        const int pos = seq.context_len + j;
        tokens[t] = batch.tokens[first_token[order[i]] + j];
        positions[t] = pos;
        slots[t] = static_cast<int64_t>(seq.block_table[pos / bs]) * bs + pos % bs;
      }
      kv_lens[i] = seq.context_len + seq.num_tokens;
      const int64_t blocks = (seq.context_len + seq.num_tokens + bs - 1) / bs;
      int32_t* table = tables + static_cast<int64_t>(i) * p.table_stride;
      std::copy_n(seq.block_table.begin(), blocks, table);
      std::fill(table + blocks, table + p.table_stride, 0);
      if (i >= num_decode) {
        q_starts[i - num_decode + 1] = q_starts[i - num_decode] + seq.num_tokens;
      }
    }
    // Graph padding: empty contexts (the kernel gives zeros) whose K/V is not stored.
    for (int i = num_decode; i < p.decode_seqs; ++i, ++t) {
      tokens[t] = 0;
      positions[t] = 0;
      slots[t] = -1;
      kv_lens[i] = 0;
      std::fill_n(tables + static_cast<int64_t>(i) * p.table_stride, p.table_stride, 0);
    }
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
    for (; r < p.rows; ++r) rows[r] = r;  // padding rows of a decode graph
    return absl::OkStatus();
  }

  // Sizes every device buffer for plan_; any move drops the captured graphs (they hold pointers).
  absl::Status Reserve() {
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
    const size_t workspace =
        kn::DecodeAttentionWorkspaceBytes(plan_.decode, plan_.decode_seqs, c.num_heads, c.head_dim);
    for (const absl::Status& s :
         {grow(&act_.residual, t * c.hidden_size), grow(&act_.xn, t * c.hidden_size),
          grow(&act_.qkv, t * row), grow(&act_.attn, t * c.q_width()),
          grow(&act_.gate_up, t * 2 * c.intermediate_size),
          grow(&act_.act, t * c.intermediate_size), grow(&act_.proj, t * c.hidden_size),
          grow(&selected_, rows * c.hidden_size), grow(&logits_, rows * c.vocab_size),
          grow(&argmax_, rows), grow(&meta_, plan_.meta.bytes),
          grow(&decode_workspace_, workspace)}) {
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
    const float scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
    const uint8_t* meta = meta_.get();
    const auto* slots = reinterpret_cast<const int64_t*>(meta + p.meta.slots);
    const auto* tokens = reinterpret_cast<const int32_t*>(meta + p.meta.tokens);
    const auto* positions = reinterpret_cast<const int32_t*>(meta + p.meta.positions);
    const auto* q_starts = reinterpret_cast<const int32_t*>(meta + p.meta.q_starts);
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
      SALS_KERNELS_RETURN_IF_ERROR(kn::ApplyRopeQk(dt, qkv, t, row, c.num_heads, c.num_kv_heads,
                                                   c.head_dim, positions, inv_freq_.get(), st));
      SALS_KERNELS_RETURN_IF_ERROR(kn::WriteKvCache(dt, qkv + qw, qkv + qw + kvw, row, t,
                                                    c.num_kv_heads, c.head_dim, slots, KPool(l),
                                                    KPool(l) + layer_kv_elems_, st));
      if (p.decode_seqs > 0) {
        SALS_KERNELS_RETURN_IF_ERROR(
            kn::DecodeAttention(dt, KvCache(l, 0, p.table_stride), p.decode_seqs, c.num_heads, qkv,
                                row, scale, p.decode, decode_workspace_.get(), attn, st));
      }
      if (p.prefill_seqs > 0) {
        const int64_t first = p.decode_seqs;  // decode slices hold one row each
        SALS_KERNELS_RETURN_IF_ERROR(kn::PrefillAttention(
            dt, KvCache(l, p.decode_seqs, p.table_stride), p.prefill_seqs, c.num_heads,
            qkv + first * row, row, q_starts, p.max_q_len, scale, attn + first * qw, st));
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
  DeviceBuffer<__half> kv_;  // per layer: K pool then V pool
  size_t layer_kv_elems_ = 0;

  StepPlan plan_;
  Activations act_;
  Buffer16 selected_;
  DeviceBuffer<float> logits_;
  DeviceBuffer<int32_t> argmax_;
  DeviceBuffer<uint8_t> meta_, decode_workspace_;
  cuda::PinnedBuffer<uint8_t> meta_host_;
  std::map<GraphKey, cuda::GraphExec> graphs_;
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
  if (pool.format.sals) {
    return absl::UnimplementedError("the CUDA backend stores dense layers only (no SALS storage)");
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
  auto backend = std::make_unique<CudaBackendImpl>(config, pool, options);
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
