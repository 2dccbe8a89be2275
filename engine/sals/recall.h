// How much of the true attention mass SALS's token selection keeps (top-k recall), measured on
// queries and keys captured from a dense run: per decode position p and layer, the softmax
// probabilities of every query head over tokens 0..p (RoPE at true positions, scale
// 1/sqrt(head_dim)) summed over the tokens the policy selects (sinks, recent window and the top-k
// middle tokens by latent score; with SalsSelection::kPerKvHead each query head counts its KV
// head's own top-k), averaged over heads.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/model/config.h"
#include "engine/sals/basis.h"
#include "engine/sals/policy.h"

namespace sals {

// Pre-RoPE queries and keys of one sequence, per layer, kept from the projection observer.
class QueryKeyRecorder {
 public:
  explicit QueryKeyRecorder(const ModelConfig& config);

  // Rows of q | k | v as the projection observer hands them; q and k are kept.
  void Observe(int layer, std::span<const float> qkv_pre_rope, int64_t tokens);

  int64_t tokens(int layer) const;
  const std::vector<float>& queries(int layer) const { return queries_[layer]; }  // x q_width
  const std::vector<float>& keys(int layer) const { return keys_[layer]; }        // x kv_width

 private:
  int q_width_;
  int kv_width_;
  std::vector<std::vector<float>> queries_;
  std::vector<std::vector<float>> keys_;
};

struct RecallOptions {
  // Sinks, recent window, top-k fraction / token budget, selection (shared or per KV head) and
  // score_dims (0 = half the basis rank)
  // as a request would use them; rank is the basis's.
  SalsPolicy policy;
  int64_t start = 0;        // first decode position measured
  std::vector<int> layers;  // layers measured; empty = all
  // Per layer (all of them), the scoring dims instead of the policy's: layer-adaptive ranks
  // (rank_allocation.h) score with rank_l / 2 each; in [1, basis rank] for measured layers.
  std::vector<int> layer_score_dims;
};

struct RecallStats {
  int64_t samples = 0;  // (layer, position) pairs
  double mean = 0.0;
  double min = 1.0;
  double selected_fraction = 0.0;  // mean share of the context attended
  // Mean recall a random choice of the same number of middle tokens would have: the baseline
  // latent scoring must beat.
  double random_recall = 0.0;
};

struct LayerRecall {
  int layer = 0;
  RecallStats stats;
};

struct RecallReport {
  std::vector<LayerRecall> layers;
  RecallStats overall;
};

// Errors on a basis or recording that does not fit the model, an invalid policy, or no position
// to measure (start beyond the recording).
absl::StatusOr<RecallReport> MeasureRecall(const ModelConfig& config, const SalsBasis& basis,
                                           const QueryKeyRecorder& recorder,
                                           const RecallOptions& options);

}  // namespace sals
