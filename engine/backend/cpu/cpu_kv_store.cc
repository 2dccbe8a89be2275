#include "engine/backend/cpu/cpu_kv_store.h"

#include <algorithm>

#include "engine/kv/fp8_quant.h"
#include "engine/kv/value_quant.h"

namespace sals::cpu {

CpuKvStore::CpuKvStore(const ModelConfig& config, const KvPoolConfig& pool, const SalsBasis* basis)
    : config_(config),
      pool_(pool),
      basis_(basis),
      inv_freq_(RopeInverseFrequencies(config)),
      width_(config.kv_width()) {
  const int64_t tokens = static_cast<int64_t>(pool.num_blocks) * pool.block_size;
  dense_k_.resize(config.num_layers);
  dense_v_.resize(config.num_layers);
  sparse_.resize(config.num_layers);
  if (const auto& s = pool.format.sals) {
    rank_ = s->rank;
    code_bytes_ = static_cast<int>(PackedCodeBytes(width_, s->values.bits));
    groups_ = s->values.bits == 16 ? 0 : width_ / s->values.group_size;
    exact_rows_ = s->sink_tokens + s->recent_tokens;
  }
  for (int l = 0; l < config.num_layers; ++l) {
    if (IsDense(l)) {
      dense_k_[l].assign(tokens * width_, 0.0f);
      dense_v_[l].assign(tokens * width_, 0.0f);
      continue;
    }
    SparseLayer& sp = sparse_[l];
    sp.latent.assign(tokens * rank_, 0.0f);
    if (groups_ == 0) {
      sp.values.assign(tokens * width_, 0.0f);
    } else {
      sp.codes.assign(tokens * code_bytes_, 0);
      sp.scales.assign(tokens * groups_, 0);
      sp.zeros.assign(tokens * groups_, 0);
    }
    const int64_t exact = static_cast<int64_t>(pool.max_sequences) * exact_rows_ * width_;
    sp.exact_k.assign(exact, 0.0f);
    sp.exact_v.assign(exact, 0.0f);
  }
}

PagedKvView CpuKvStore::DenseView(int layer) {
  return PagedKvView{dense_k_[layer].data(), dense_v_[layer].data(), pool_.block_size,
                     config_.num_kv_heads, config_.head_dim};
}

void CpuKvStore::WriteDense(int layer, int64_t offset, const float* k, const float* v) {
  float* kd = dense_k_[layer].data() + offset;
  float* vd = dense_v_[layer].data() + offset;
  std::copy_n(k, width_, kd);
  std::copy_n(v, width_, vd);
  if (pool_.format.dense_dtype == KvDType::kFp8E4M3) {
    RoundTripFp8Rows(kd, width_, config_.head_dim);
    RoundTripFp8Rows(vd, width_, config_.head_dim);
  }
}

int64_t CpuKvStore::TokenSlot(std::span<const int32_t> table, int64_t pos) const {
  return static_cast<int64_t>(table[pos / pool_.block_size]) * pool_.block_size +
         pos % pool_.block_size;
}

int64_t CpuKvStore::ExactRow(int slot, int64_t pos, int64_t cached,
                             int64_t exact_valid_from) const {
  const SalsStorage& s = *pool_.format.sals;
  const int64_t base = static_cast<int64_t>(slot) * exact_rows_;
  if (pos < s.sink_tokens) return base + pos;
  if (pos >= cached - s.recent_tokens && pos >= exact_valid_from) {
    return base + s.sink_tokens + pos % s.recent_tokens;
  }
  return -1;
}

void CpuKvStore::WriteSals(int layer, int slot, std::span<const int32_t> table, int64_t pos,
                           const float* k_pre, const float* k_post, const float* v) {
  SparseLayer& sp = sparse_[layer];
  const int64_t t = TokenSlot(table, pos);
  // Latent key: k~ = U^T k_pre.
  const std::vector<float>& u = basis_->layers[layer];
  const int basis_rank = basis_->rank;
  float* latent = sp.latent.data() + t * rank_;
  std::fill_n(latent, rank_, 0.0f);
  for (int i = 0; i < width_; ++i) {
    const float* row = u.data() + static_cast<int64_t>(i) * basis_rank;
    for (int j = 0; j < rank_; ++j) latent[j] += row[j] * k_pre[i];
  }
  if (pool_.format.sals->latent_dtype == KvDType::kFp8E4M3) RoundTripFp8Rows(latent, rank_, rank_);
  if (groups_ == 0) {
    std::copy_n(v, width_, sp.values.data() + t * width_);
  } else {
    QuantizeValues(v, width_, pool_.format.sals->values, sp.codes.data() + t * code_bytes_,
                   sp.scales.data() + t * groups_, sp.zeros.data() + t * groups_);
  }
  // Every token passes through the recent ring; sinks stay for good.
  const int64_t row = ExactRow(slot, pos, pos + 1, pos);
  std::copy_n(k_post, width_, sp.exact_k.data() + row * width_);
  std::copy_n(v, width_, sp.exact_v.data() + row * width_);
}

void CpuKvStore::ReadSals(int layer, int slot, std::span<const int32_t> table, int64_t pos,
                          int64_t cached, int64_t exact_valid_from, int rank, float* k_post,
                          float* v) const {
  const SparseLayer& sp = sparse_[layer];
  if (const int64_t row = ExactRow(slot, pos, cached, exact_valid_from); row >= 0) {
    std::copy_n(sp.exact_k.data() + row * width_, width_, k_post);
    std::copy_n(sp.exact_v.data() + row * width_, width_, v);
    return;
  }
  const int64_t t = TokenSlot(table, pos);
  // k_pre = U[:, :rank] k~[:rank], then RoPE at the token's true position.
  const std::vector<float>& u = basis_->layers[layer];
  const int basis_rank = basis_->rank;
  const float* latent = sp.latent.data() + t * rank_;
  for (int i = 0; i < width_; ++i) {
    const float* row = u.data() + static_cast<int64_t>(i) * basis_rank;
    float acc = 0.0f;
    for (int j = 0; j < rank; ++j) acc += row[j] * latent[j];
    k_post[i] = acc;
  }
  ApplyRope(k_post, config_.num_kv_heads, config_.head_dim, inv_freq_, pos);
  if (groups_ == 0) {
    std::copy_n(sp.values.data() + t * width_, width_, v);
  } else {
    DequantizeValues(sp.codes.data() + t * code_bytes_, sp.scales.data() + t * groups_,
                     sp.zeros.data() + t * groups_, width_, pool_.format.sals->values, v);
  }
}

const float* CpuKvStore::Latent(int layer, std::span<const int32_t> table, int64_t pos) const {
  return sparse_[layer].latent.data() + TokenSlot(table, pos) * rank_;
}

}  // namespace sals::cpu
