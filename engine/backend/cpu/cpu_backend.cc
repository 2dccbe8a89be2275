#include "engine/backend/cpu/cpu_backend.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <iterator>
#include <span>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/backend/batch_validation.h"
#include "engine/backend/cpu/cpu_kv_store.h"
#include "engine/backend/cpu/cpu_ops.h"
#include "engine/backend/host_sampling.h"
#include "engine/sals/selection.h"

namespace sals {
namespace {

struct LayerWeights {
  std::vector<float> input_norm;
  std::vector<float> wqkv;  // [q_width + 2 * kv_width, hidden]: q, k, v projections stacked
  std::vector<float> wo;
  std::vector<float> post_norm;
  std::vector<float> w_gate_up;  // [2 * intermediate, hidden]: gate then up
  std::vector<float> w_down;
};

absl::Status ReadInto(const WeightSource& src, const std::string& name, std::vector<int64_t> shape,
                      std::vector<float>* dst, size_t offset = 0) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  if (dst->size() < offset + n) dst->resize(offset + n);
  return src.ReadF32(name, shape, std::span<float>(dst->data() + offset, n));
}

// Where each token of a batch belongs.
struct TokenIndex {
  std::vector<int32_t> seq;        // its sequence in the batch
  std::vector<int32_t> pos;        // its absolute position
  std::vector<int64_t> seq_begin;  // per sequence, its first token
};

TokenIndex IndexTokens(const ForwardBatch& batch) {
  TokenIndex ix;
  for (size_t s = 0; s < batch.seqs.size(); ++s) {
    ix.seq_begin.push_back(static_cast<int64_t>(ix.seq.size()));
    for (int32_t j = 0; j < batch.seqs[s].num_tokens; ++j) {
      ix.seq.push_back(static_cast<int32_t>(s));
      ix.pos.push_back(batch.seqs[s].context_len + j);
    }
  }
  return ix;
}

class CpuBackend : public Backend {
 public:
  CpuBackend(const ModelConfig& config, const KvPoolConfig& pool, CpuBackendOptions options)
      : config_(config),
        pool_(pool),
        options_(std::move(options)),
        inv_freq_(RopeInverseFrequencies(config)) {}

  absl::Status Load(const WeightSource& src) {
    const ModelConfig& c = config_;
    const int64_t h = c.hidden_size, qw = c.q_width(), kvw = c.kv_width(),
                  inter = c.intermediate_size;
    if (absl::Status s = ValidateLlamaWeights(c, src); !s.ok()) return s;
    if (auto s = ReadInto(src, "model.embed_tokens.weight", {c.vocab_size, h}, &embed_); !s.ok())
      return s;
    if (auto s = ReadInto(src, "model.norm.weight", {h}, &final_norm_); !s.ok()) return s;
    if (!c.tie_word_embeddings) {
      if (auto s = ReadInto(src, "lm_head.weight", {c.vocab_size, h}, &lm_head_); !s.ok()) return s;
    }
    layers_.resize(c.num_layers);
    for (int l = 0; l < c.num_layers; ++l) {
      const std::string p = absl::StrCat("model.layers.", l, ".");
      LayerWeights& w = layers_[l];
      absl::Status s = ReadInto(src, p + "input_layernorm.weight", {h}, &w.input_norm);
      if (s.ok()) s = ReadInto(src, p + "self_attn.q_proj.weight", {qw, h}, &w.wqkv);
      if (s.ok()) s = ReadInto(src, p + "self_attn.k_proj.weight", {kvw, h}, &w.wqkv, qw * h);
      if (s.ok()) {
        s = ReadInto(src, p + "self_attn.v_proj.weight", {kvw, h}, &w.wqkv, (qw + kvw) * h);
      }
      if (s.ok()) s = ReadInto(src, p + "self_attn.o_proj.weight", {h, qw}, &w.wo);
      if (s.ok()) s = ReadInto(src, p + "post_attention_layernorm.weight", {h}, &w.post_norm);
      if (s.ok()) s = ReadInto(src, p + "mlp.gate_proj.weight", {inter, h}, &w.w_gate_up);
      if (s.ok()) s = ReadInto(src, p + "mlp.up_proj.weight", {inter, h}, &w.w_gate_up, inter * h);
      if (s.ok()) s = ReadInto(src, p + "mlp.down_proj.weight", {h, inter}, &w.w_down);
      if (!s.ok()) return s;
    }
    kv_ = std::make_unique<cpu::CpuKvStore>(c, pool_, &options_.basis);
    return absl::OkStatus();
  }

  const ModelConfig& config() const override { return config_; }
  const KvPoolConfig& kv_pool() const override { return pool_; }

  absl::Status ForwardSample(const ForwardBatch& batch, std::span<const RowSampling* const> rows,
                             std::vector<SampleResult>* results, ForwardOutput* out) override {
    if (absl::Status s = ValidateSampleRows(batch, rows); !s.ok()) return s;
    if (absl::Status s = Forward(batch, out); !s.ok()) return s;
    SampleOnHost(batch, rows, config_.vocab_size, out, results);
    return absl::OkStatus();
  }

  absl::Status Forward(const ForwardBatch& batch, ForwardOutput* out) override {
    if (absl::Status s = ValidateForwardBatch(batch, config_, pool_); !s.ok()) return s;
    // Per calling thread (an ICV of the engine's step thread, not the process).
    if (options_.num_threads > 0) omp_set_num_threads(options_.num_threads);
    const ModelConfig& c = config_;
    const int64_t t = static_cast<int64_t>(batch.tokens.size());
    const int h = c.hidden_size, qw = c.q_width(), kvw = c.kv_width();
    const int inter = c.intermediate_size, row = qw + 2 * kvw;
    const TokenIndex ix = IndexTokens(batch);
    out->sals_attended_tokens = out->sals_cached_tokens = 0;

    std::vector<float> x(t * h), xn(t * h), qkv(t * row), attn(t * qw);
    std::vector<float> gate_up(t * 2 * inter), act(t * inter), proj(t * h);
    std::vector<float> pre_rope;  // [t x row] copy of q|k|v before RoPE (SALS layers, observer)
    for (int64_t i = 0; i < t; ++i) {
      std::copy_n(embed_.data() + static_cast<int64_t>(batch.tokens[i]) * h, h, x.data() + i * h);
    }

    for (int l = 0; l < c.num_layers; ++l) {
      const LayerWeights& w = layers_[l];
      cpu::RmsNorm(x.data(), w.input_norm.data(), t, h, static_cast<float>(c.rms_norm_eps),
                   xn.data());
      cpu::Linear(xn.data(), t, h, w.wqkv.data(), row, qkv.data());
      const bool dense = kv_->IsDense(l);
      if (!dense || options_.projection_observer) pre_rope = qkv;
      if (options_.projection_observer) options_.projection_observer(l, pre_rope, t);
      ApplyRope(ix, qkv.data());
      if (dense) {
        const cpu::PagedKvView kv = kv_->DenseView(l);
        WriteDense(l, batch, ix, kv, qkv.data());
        AttendDense(batch, ix, kv, qkv.data(), attn.data());
      } else {
        for (size_t s = 0; s < batch.seqs.size(); ++s) {
          AttendSals(l, static_cast<int>(s), batch.seqs[s], ix.seq_begin[s], pre_rope.data(),
                     qkv.data(), attn.data(), out);
        }
      }
      cpu::Linear(attn.data(), t, qw, w.wo.data(), h, proj.data());
      for (int64_t i = 0; i < t * h; ++i) x[i] += proj[i];

      cpu::RmsNorm(x.data(), w.post_norm.data(), t, h, static_cast<float>(c.rms_norm_eps),
                   xn.data());
      cpu::Linear(xn.data(), t, h, w.w_gate_up.data(), 2 * inter, gate_up.data());
#pragma omp parallel for schedule(static) if (t > 1)
      for (int64_t i = 0; i < t; ++i) {
        const float* g = gate_up.data() + i * 2 * inter;
        cpu::SiluMul(g, g + inter, inter, act.data() + i * inter);
      }
      cpu::Linear(act.data(), t, inter, w.w_down.data(), h, proj.data());
      for (int64_t i = 0; i < t * h; ++i) x[i] += proj[i];
    }

    // Final norm and LM head only on the rows whose logits were asked for.
    const int32_t rows = AssignLogitRows(batch, &out->row_begin);
    std::vector<float> sel(static_cast<int64_t>(rows) * h);
    for (int64_t s = 0, i = 0, r = 0; s < static_cast<int64_t>(batch.seqs.size()); ++s) {
      const SequenceSlice& seq = batch.seqs[s];
      for (int32_t j = 0; j < seq.num_tokens; ++j, ++i) {
        if (seq.all_logits || j == seq.num_tokens - 1) {
          std::copy_n(x.data() + i * h, h, sel.data() + (r++) * h);
        }
      }
    }
    cpu::RmsNorm(sel.data(), final_norm_.data(), rows, h, static_cast<float>(c.rms_norm_eps),
                 sel.data());
    out->logits.resize(static_cast<int64_t>(rows) * c.vocab_size);
    const std::vector<float>& head = c.tie_word_embeddings ? embed_ : lm_head_;
    cpu::Linear(sel.data(), rows, h, head.data(), c.vocab_size, out->logits.data());
    return absl::OkStatus();
  }

 private:
  // RoPE on q and k of every new token, in place in qkv.
  void ApplyRope(const TokenIndex& ix, float* qkv) const {
    const ModelConfig& c = config_;
    const int qw = c.q_width(), row = qw + 2 * c.kv_width();
    const int64_t t = static_cast<int64_t>(ix.pos.size());
#pragma omp parallel for schedule(static) if (t > 1)
    for (int64_t i = 0; i < t; ++i) {
      cpu::ApplyRope(qkv + i * row, c.num_heads, c.head_dim, inv_freq_, ix.pos[i]);
      cpu::ApplyRope(qkv + i * row + qw, c.num_kv_heads, c.head_dim, inv_freq_, ix.pos[i]);
    }
  }

  void WriteDense(int layer, const ForwardBatch& batch, const TokenIndex& ix,
                  const cpu::PagedKvView& kv, const float* qkv) {
    const int qw = config_.q_width(), kvw = config_.kv_width(), row = qw + 2 * kvw;
    for (size_t i = 0; i < ix.pos.size(); ++i) {
      const int64_t off = kv.Offset(batch.seqs[ix.seq[i]].block_table, ix.pos[i], 0);
      kv_->WriteDense(layer, off, qkv + i * row + qw, qkv + i * row + qw + kvw);
    }
  }

  // Causal (optionally sliding-window) attention of every new token's query heads.
  void AttendDense(const ForwardBatch& batch, const TokenIndex& ix, const cpu::PagedKvView& kv,
                   const float* qkv, float* attn) const {
    const ModelConfig& c = config_;
    const int qw = c.q_width(), row = qw + 2 * c.kv_width(), group = c.group_size();
    const float scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
    int64_t max_len = 0;
    for (const SequenceSlice& s : batch.seqs) {
      max_len = std::max<int64_t>(max_len, s.context_len + s.num_tokens);
    }
    const int64_t work = static_cast<int64_t>(ix.pos.size()) * c.num_heads;
#pragma omp parallel
    {
      std::vector<float> scores(max_len);
#pragma omp for schedule(dynamic, 4)
      for (int64_t item = 0; item < work; ++item) {
        const int64_t i = item / c.num_heads;
        const int head = static_cast<int>(item % c.num_heads);
        const int64_t pos = ix.pos[i];
        const int64_t first =
            c.sliding_window ? std::max<int64_t>(0, pos - *c.sliding_window + 1) : 0;
        cpu::AttendPaged(qkv + i * row + static_cast<int64_t>(head) * c.head_dim, kv,
                         batch.seqs[ix.seq[i]].block_table, head / group, first, pos, scale,
                         scores.data(), attn + i * qw + static_cast<int64_t>(head) * c.head_dim);
      }
    }
  }

  // Cached positions a SALS layer attends to for this slice, one sorted list per selection list
  // (SelectionLists: one shared by every head, or one per KV head). A prefill chunk (several
  // tokens) attends densely to everything cached (one list); a one-token step attends to the
  // sinks, the recent window and the top-k middle tokens by latent score.
  std::vector<std::vector<int64_t>> SalsPositions(int layer, const SequenceSlice& seq,
                                                  const float* q_pre,
                                                  const SalsPolicy& policy) const {
    const int64_t cached = seq.context_len;
    if (seq.num_tokens > 1 || policy.select_all) {
      std::vector<int64_t> all(cached);
      for (int64_t j = 0; j < cached; ++j) all[j] = j;
      return {std::move(all)};
    }
    const SelectionPlan plan = PlanSelection(policy, cached);
    const int lists = SelectionLists(config_, policy.selection);
    std::vector<std::vector<int64_t>> positions(lists);
    // sink_end may count the new token (a context shorter than the sink window): it is attended
    // once, as a new token, not read from the store it is not yet in.
    for (std::vector<int64_t>& list : positions) {
      for (int64_t j = 0; j < std::min<int64_t>(plan.sink_end, cached); ++j) list.push_back(j);
    }
    if (plan.topk > 0) {
      // Latent queries (selection.h); only the first score_dims latent dims score. Each cached
      // latent is read once and scored against every list's query.
      const int r = policy.score_dims;
      const std::vector<float> q_latent = LatentQueries(
          config_, kv_->basis(layer), options_.basis.rank, r, q_pre, policy.selection);
      const int64_t middle = plan.recent_begin - plan.sink_end;
      std::vector<float> scores(lists * middle);
#pragma omp parallel for schedule(static) if (middle > 4096)
      for (int64_t m = 0; m < middle; ++m) {
        const float* latent = kv_->Latent(layer, seq.block_table, plan.sink_end + m);
        for (int l = 0; l < lists; ++l) {
          const float* q = q_latent.data() + static_cast<int64_t>(l) * r;
          float acc = 0.0f;
          for (int j = 0; j < r; ++j) acc += q[j] * latent[j];
          scores[l * middle + m] = acc;
        }
      }
      for (int l = 0; l < lists; ++l) {
        for (int64_t m : SelectTopK(std::span(scores).subspan(l * middle, middle), plan.topk)) {
          positions[l].push_back(plan.sink_end + m);
        }
      }
    }
    for (std::vector<int64_t>& list : positions) {
      for (int64_t j = plan.recent_begin; j < cached; ++j) list.push_back(j);
    }
    return positions;
  }

  // A one-token step's attention with one list per KV head: g's query heads attend g's list
  // (its rows gathered from the union `positions` read into keys/values), then the new token
  // (row positions.size() of keys/values).
  void AttendPerKvHead(const std::vector<std::vector<int64_t>>& lists,
                       std::span<const int64_t> positions, const std::vector<float>& keys,
                       const std::vector<float>& values, const float* q_row,
                       float* attn_row) const {
    const ModelConfig& c = config_;
    const int hd = c.head_dim, kvw = c.kv_width(), group = c.group_size();
    const int64_t m = static_cast<int64_t>(positions.size());
    const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
#pragma omp parallel for schedule(static) if (m > 64)
    for (int g = 0; g < c.num_kv_heads; ++g) {
      const std::vector<int64_t>& list = lists[g];
      const int64_t rows = static_cast<int64_t>(list.size()) + 1;
      std::vector<float> k(rows * hd), v(rows * hd), scores(rows);
      for (int64_t j = 0; j < rows; ++j) {
        const int64_t u =
            j + 1 < rows
                ? std::lower_bound(positions.begin(), positions.end(), list[j]) - positions.begin()
                : m;
        const int64_t src = u * kvw + static_cast<int64_t>(g) * hd;
        std::copy_n(keys.data() + src, hd, k.data() + j * hd);
        std::copy_n(values.data() + src, hd, v.data() + j * hd);
      }
      for (int h = g * group; h < (g + 1) * group; ++h) {
        cpu::AttendRows(q_row + static_cast<int64_t>(h) * hd, k.data(), v.data(), hd, rows, hd,
                        scale, scores.data(), attn_row + static_cast<int64_t>(h) * hd);
      }
    }
  }

  // One sequence's attention in a SALS layer, then its new tokens stored as latents + quantized
  // values (and exact copies for sinks / the recent ring).
  void AttendSals(int layer, int seq_index, const SequenceSlice& seq, int64_t first_token,
                  const float* pre_rope, const float* qkv, float* attn, ForwardOutput* out) {
    const ModelConfig& c = config_;
    const int qw = c.q_width(), kvw = c.kv_width(), row = qw + 2 * kvw, group = c.group_size();
    const int64_t n = seq.num_tokens;
    const SalsPolicy policy = seq.policy.Resolved(*pool_.format.sals);
    const std::vector<std::vector<int64_t>> lists =
        SalsPositions(layer, seq, pre_rope + first_token * row, policy);
    // Every list's tokens are read from the store once: their union, sorted.
    std::vector<int64_t> positions = lists[0];
    for (size_t l = 1; l < lists.size(); ++l) {
      std::vector<int64_t> merged;
      std::set_union(positions.begin(), positions.end(), lists[l].begin(), lists[l].end(),
                     std::back_inserter(merged));
      positions = std::move(merged);
    }
    const int64_t m = static_cast<int64_t>(positions.size());
    if (n == 1) {
      // Tokens each head attends (every list is as long), not the union read.
      out->sals_attended_tokens += static_cast<int64_t>(lists[0].size());
      out->sals_cached_tokens += seq.context_len;
      if (options_.selection_observer) {
        for (size_t l = 0; l < lists.size(); ++l) {
          options_.selection_observer(layer, seq_index,
                                      lists.size() == 1 ? -1 : static_cast<int>(l), lists[l]);
        }
      }
    }

    // Keys (post-RoPE) and values: the union's cached tokens, then the new tokens exact.
    std::vector<float> keys((m + n) * kvw), values((m + n) * kvw);
#pragma omp parallel for schedule(static) if (m > 64)
    for (int64_t j = 0; j < m; ++j) {
      kv_->ReadSals(layer, seq.exact_slot, seq.block_table, positions[j], seq.context_len,
                    seq.exact_valid_from, policy.rank, keys.data() + j * kvw,
                    values.data() + j * kvw);
    }
    for (int64_t i = 0; i < n; ++i) {
      const float* src = qkv + (first_token + i) * row;
      std::copy_n(src + qw, kvw, keys.data() + (m + i) * kvw);
      std::copy_n(src + qw + kvw, kvw, values.data() + (m + i) * kvw);
    }
    if (lists.size() > 1) {
      AttendPerKvHead(lists, positions, keys, values, qkv + first_token * row,
                      attn + first_token * qw);
    } else {
      const float scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
#pragma omp parallel
      {
        std::vector<float> scores(m + n);
#pragma omp for schedule(dynamic, 4)
        for (int64_t item = 0; item < n * c.num_heads; ++item) {
          const int64_t i = item / c.num_heads;
          const int head = static_cast<int>(item % c.num_heads);
          const int64_t kv_off = static_cast<int64_t>(head / group) * c.head_dim;
          const int64_t q_off = (first_token + i) * row + static_cast<int64_t>(head) * c.head_dim;
          cpu::AttendRows(qkv + q_off, keys.data() + kv_off, values.data() + kv_off, kvw, m + i + 1,
                          c.head_dim, scale, scores.data(),
                          attn + (first_token + i) * qw + static_cast<int64_t>(head) * c.head_dim);
        }
      }
    }
    for (int64_t i = 0; i < n; ++i) {
      const int64_t t = first_token + i;
      kv_->WriteSals(layer, seq.exact_slot, seq.block_table, seq.context_len + i,
                     pre_rope + t * row + qw, qkv + t * row + qw, qkv + t * row + qw + kvw);
    }
  }

  ModelConfig config_;
  KvPoolConfig pool_;
  CpuBackendOptions options_;
  std::vector<double> inv_freq_;
  std::vector<float> embed_, final_norm_, lm_head_;
  std::vector<LayerWeights> layers_;
  std::unique_ptr<cpu::CpuKvStore> kv_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Backend>> CreateCpuBackend(const ModelConfig& config,
                                                          const WeightSource& weights,
                                                          const KvPoolConfig& pool,
                                                          CpuBackendOptions options) {
  if (pool.num_blocks <= 0 || pool.block_size <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("KV pool needs positive num_blocks and ",
                                                   "block_size, got ", pool.num_blocks, " and ",
                                                   pool.block_size));
  }
  KvPoolConfig resolved = pool;
  if (resolved.format.dense_layer.empty())
    resolved.format.dense_layer.assign(config.num_layers, true);
  if (absl::Status s = ValidateKvCacheFormat(config, resolved.format); !s.ok()) return s;
  if (const auto& sals = resolved.format.sals) {
    const SalsBasis& b = options.basis;
    if (b.width != config.kv_width() || b.rank < sals->rank ||
        static_cast<int>(b.layers.size()) != config.num_layers) {
      return absl::InvalidArgumentError(absl::StrCat(
          "SALS storage of rank ", sals->rank, " needs a basis of width ", config.kv_width(),
          " and rank >= ", sals->rank, " for ", config.num_layers, " layers; got width ", b.width,
          ", rank ", b.rank, ", ", b.layers.size(), " layers"));
    }
    if (resolved.max_sequences <= 0) {
      return absl::InvalidArgumentError("SALS storage needs max_sequences > 0");
    }
  }
  auto backend = std::make_unique<CpuBackend>(config, resolved, std::move(options));
  if (absl::Status s = backend->Load(weights); !s.ok()) return s;
  return backend;
}

}  // namespace sals
