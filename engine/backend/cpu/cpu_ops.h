// fp32 reference operators of a Llama-family decoder. The CPU backend is built from them and the
// CUDA kernels' tests compare against them, so they favour clarity over speed (but use all cores).
#pragma once

#include <cstdint>
#include <span>

namespace sals::cpu {

// y[r] = x[r] / sqrt(mean(x[r]^2) + eps) * weight, for `rows` rows of width n. y may alias x.
void RmsNorm(const float* x, const float* weight, int64_t rows, int n, float eps, float* y);

// y[rows x out] = x[rows x in] * w^T, w row-major [out x in] (the HF Linear layout).
void Linear(const float* x, int64_t rows, int in, const float* w, int out, float* y);

// In place, HF rotate-half RoPE on `num_heads` consecutive heads of width head_dim at
// position `pos`: pairs (i, i + head_dim/2) rotate by pos * inv_freq[i].
void ApplyRope(float* x, int num_heads, int head_dim, std::span<const double> inv_freq,
               int64_t pos);

// y = silu(gate) * up elementwise.
void SiluMul(const float* gate, const float* up, int64_t n, float* y);

// One layer's paged K/V cache: element (block, slot, head, dim) at
// ((block * block_size + slot) * num_kv_heads + head) * head_dim + dim.
struct PagedKvView {
  float* k = nullptr;
  float* v = nullptr;
  int block_size = 0;
  int num_kv_heads = 0;
  int head_dim = 0;

  int64_t Offset(std::span<const int32_t> block_table, int64_t pos, int head) const {
    const int64_t block = block_table[pos / block_size];
    return ((block * block_size + pos % block_size) * num_kv_heads + head) * head_dim;
  }
};

// Exact causal attention of one query head over cached positions [first, last] (inclusive) of
// kv head `kv_head`: out = softmax(q . k_j * scale) v_j. `scores` has room for last-first+1.
void AttendPaged(const float* q, const PagedKvView& kv, std::span<const int32_t> block_table,
                 int kv_head, int64_t first, int64_t last, float scale, float* scores, float* out);

// The same over `count` contiguous rows: key j of the head at k + j * stride (values alike).
void AttendRows(const float* q, const float* k, const float* v, int64_t stride, int64_t count,
                int head_dim, float scale, float* scores, float* out);

}  // namespace sals::cpu
