// The CPU reference's KV pool: per layer either dense (post-RoPE K and V, fp32) or SALS
// (latent keys fp32, values group-quantized in the kv/value_quant format, and per sequence slot
// an exact copy of the sink tokens and a ring of the most recent tokens). With an fp8 dtype, dense
// K/V (per KV head) and latent keys (per token) are quantized on write (kv/fp8_quant.h) and the
// fp32 store holds their dequantized values: what reading codes and scale back would give.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "engine/backend/backend.h"
#include "engine/backend/cpu/cpu_ops.h"
#include "engine/sals/basis.h"

namespace sals::cpu {

class CpuKvStore {
 public:
  CpuKvStore(const ModelConfig& config, const KvPoolConfig& pool, const SalsBasis* basis);

  bool IsDense(int layer) const { return pool_.format.IsDense(layer); }
  PagedKvView DenseView(int layer);
  // Stores k and v (kv_width values each, post-RoPE) at `offset` of a dense layer's view,
  // through fp8 when the format's dense dtype says so.
  void WriteDense(int layer, int64_t offset, const float* k, const float* v);

  // SALS layers. Stores token `pos` of a sequence: latent U^T k_pre, quantized v, and exact
  // k_post / v when pos is a sink or (for now) among the most recent tokens.
  void WriteSals(int layer, int slot, std::span<const int32_t> table, int64_t pos,
                 const float* k_pre, const float* k_post, const float* v);

  // Post-RoPE key and value of cached token `pos` of a sequence whose cache holds `cached`
  // tokens, of which the slot has exact copies from `exact_valid_from` on (and the sinks): exact
  // where the slot has it, else rebuilt from the first `rank` latent dims (U k~, RoPE at pos)
  // and dequantized.
  void ReadSals(int layer, int slot, std::span<const int32_t> table, int64_t pos, int64_t cached,
                int64_t exact_valid_from, int rank, float* k_post, float* v) const;

  // The stored latent key of token `pos` (rank values).
  const float* Latent(int layer, std::span<const int32_t> table, int64_t pos) const;

  int stored_rank() const { return rank_; }
  const std::vector<float>& basis(int layer) const { return basis_->layers[layer]; }

 private:
  struct SparseLayer {
    std::vector<float> latent;     // [slots_total x rank]
    std::vector<uint8_t> codes;    // [slots_total x code_bytes]
    std::vector<uint16_t> scales;  // [slots_total x groups]
    std::vector<uint16_t> zeros;   // [slots_total x groups]
    std::vector<float> values;     // [slots_total x D] when values are not quantized (bits 16)
    std::vector<float> exact_k;    // [max_sequences x (sinks + recent) x D]
    std::vector<float> exact_v;
  };
  int64_t TokenSlot(std::span<const int32_t> table, int64_t pos) const;
  // Row of the exact store holding `pos`, or -1 when it is not kept exact (any more).
  int64_t ExactRow(int slot, int64_t pos, int64_t cached, int64_t exact_valid_from) const;

  ModelConfig config_;
  KvPoolConfig pool_;
  const SalsBasis* basis_;
  std::vector<double> inv_freq_;
  int width_ = 0, rank_ = 0, code_bytes_ = 0, groups_ = 0, exact_rows_ = 0;
  std::vector<std::vector<float>> dense_k_, dense_v_;  // per layer (empty for sparse layers)
  std::vector<SparseLayer> sparse_;                    // per layer (empty for dense layers)
};

}  // namespace sals::cpu
