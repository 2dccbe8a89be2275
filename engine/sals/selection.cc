#include "engine/sals/selection.h"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace sals {

int SelectionLists(const ModelConfig& config, SalsSelection selection) {
  return selection == SalsSelection::kPerKvHead ? config.num_kv_heads : 1;
}

std::vector<float> LatentQueries(const ModelConfig& config, std::span<const float> basis,
                                 int basis_rank, int score_dims, const float* q_pre,
                                 SalsSelection selection) {
  const int width = config.kv_width(), group = config.group_size(), hd = config.head_dim;
  std::vector<float> q_sum(width, 0.0f);
  for (int h = 0; h < config.num_heads; ++h) {
    for (int i = 0; i < hd; ++i) q_sum[(h / group) * hd + i] += q_pre[h * hd + i];
  }
  const int lists = SelectionLists(config, selection);
  std::vector<float> out(static_cast<int64_t>(lists) * score_dims, 0.0f);
  for (int i = 0; i < width; ++i) {
    // Row i of U belongs to KV head i / head_dim; shared, every row feeds the one query.
    float* q_latent = out.data() + (lists == 1 ? 0 : static_cast<int64_t>(i / hd) * score_dims);
    const float* row = basis.data() + static_cast<int64_t>(i) * basis_rank;
    for (int j = 0; j < score_dims; ++j) q_latent[j] += row[j] * q_sum[i];
  }
  return out;
}

std::vector<int64_t> SelectTopK(std::span<const float> scores, int64_t k) {
  const int64_t n = static_cast<int64_t>(scores.size());
  k = std::clamp<int64_t>(k, 0, n);
  std::vector<int64_t> idx(n);
  std::iota(idx.begin(), idx.end(), 0);
  // NaN ranks below every number (-inf included), then the smaller index wins.
  auto before = [&](int64_t a, int64_t b) {
    const bool na = std::isnan(scores[a]), nb = std::isnan(scores[b]);
    if (na != nb) return nb;
    if (!na && scores[a] != scores[b]) return scores[a] > scores[b];
    return a < b;
  };
  std::nth_element(idx.begin(), idx.begin() + k, idx.end(), before);
  idx.resize(k);
  std::sort(idx.begin(), idx.end());
  return idx;
}

}  // namespace sals
