#include "engine/sals/selection.h"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace sals {

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
