// Top-k token selection from latent scores (the reference the CUDA radix select is checked
// against).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace sals {

// Indices of the k largest scores, ties broken by the smaller index, returned in ascending index
// order. NaN scores rank below every number.
std::vector<int64_t> SelectTopK(std::span<const float> scores, int64_t k);

}  // namespace sals
