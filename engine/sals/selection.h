// Token selection from latent scores: the latent queries a decode step scores with (shared or
// per KV head, policy.h's SalsSelection) and the top-k (the reference the CUDA radix select is
// checked against).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "engine/model/config.h"
#include "engine/sals/policy.h"

namespace sals {

// How many selected lists a step keeps per layer: 1 (shared) or num_kv_heads (per KV head).
int SelectionLists(const ModelConfig& config, SalsSelection selection);

// The latent queries of one token, SelectionLists rows of `score_dims` values, from its pre-RoPE
// query heads `q_pre` (q_width values) and a row-major [kv_width x basis_rank] basis U. The
// query heads of each GQA group are summed (q_g, head_dim wide). Shared: one row,
// U[:, :score_dims]^T (q_0 | q_1 | ...). Per KV head: row g = U_g[:, :score_dims]^T q_g, U_g
// being g's head_dim rows of U. Token t's score in list l is row l . latent_t[:score_dims]; the
// shared score is the sum of the per-head ones.
std::vector<float> LatentQueries(const ModelConfig& config, std::span<const float> basis,
                                 int basis_rank, int score_dims, const float* q_pre,
                                 SalsSelection selection);

// Indices of the k largest scores, ties broken by the smaller index, returned in ascending index
// order. NaN scores rank below every number.
std::vector<int64_t> SelectTopK(std::span<const float> scores, int64_t k);

}  // namespace sals
