#include "engine/backend/cpu/cpu_ops.h"

#include <Eigen/Core>
#include <algorithm>
#include <cmath>

namespace sals::cpu {
namespace {
using RowMatrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using ConstVec = Eigen::Map<const Eigen::VectorXf>;

// Softmax attention of one query over `count` keys/values found by key_at(j) / value_at(j).
template <typename KeyAt, typename ValueAt>
void Attend(const float* q, int64_t count, int head_dim, float scale, KeyAt key_at,
            ValueAt value_at, float* scores, float* out) {
  ConstVec qv(q, head_dim);
  float max_score = -INFINITY;
  for (int64_t j = 0; j < count; ++j) {
    scores[j] = qv.dot(ConstVec(key_at(j), head_dim)) * scale;
    max_score = std::max(max_score, scores[j]);
  }
  double denom = 0.0;
  for (int64_t j = 0; j < count; ++j) {
    scores[j] = std::exp(scores[j] - max_score);
    denom += scores[j];
  }
  Eigen::Map<Eigen::VectorXf> o(out, head_dim);
  o.setZero();
  for (int64_t j = 0; j < count; ++j) o += scores[j] * ConstVec(value_at(j), head_dim);
  o *= static_cast<float>(1.0 / denom);
}
}  // namespace

void RmsNorm(const float* x, const float* weight, int64_t rows, int n, float eps, float* y) {
#pragma omp parallel for schedule(static) if (rows > 1)
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * n;
    double sum_sq = 0.0;
    for (int i = 0; i < n; ++i) sum_sq += static_cast<double>(xr[i]) * xr[i];
    const float inv = 1.0f / std::sqrt(static_cast<float>(sum_sq / n) + eps);
    float* yr = y + r * n;
    for (int i = 0; i < n; ++i) yr[i] = xr[i] * inv * weight[i];
  }
}

void Linear(const float* x, int64_t rows, int in, const float* w, int out, float* y) {
  Eigen::Map<const RowMatrix> xm(x, rows, in);
  Eigen::Map<const RowMatrix> wm(w, out, in);
  if (rows >= 4) {  // Eigen's GEMM is blocked and OpenMP-parallel.
    Eigen::Map<RowMatrix> ym(y, rows, out);
    ym.noalias() = xm * wm.transpose();
    return;
  }
  // Decode-sized products are matrix-vector: split the output rows over threads instead.
#pragma omp parallel for schedule(static)
  for (int o = 0; o < out; ++o) {
    for (int64_t r = 0; r < rows; ++r) y[r * out + o] = xm.row(r).dot(wm.row(o));
  }
}

void ApplyRope(float* x, int num_heads, int head_dim, std::span<const double> inv_freq,
               int64_t pos) {
  const int half = head_dim / 2;
  for (int i = 0; i < half; ++i) {
    const double angle = static_cast<double>(pos) * inv_freq[i];
    const float c = static_cast<float>(std::cos(angle));
    const float s = static_cast<float>(std::sin(angle));
    for (int h = 0; h < num_heads; ++h) {
      float* xh = x + static_cast<int64_t>(h) * head_dim;
      const float a = xh[i];
      const float b = xh[i + half];
      xh[i] = a * c - b * s;
      xh[i + half] = b * c + a * s;
    }
  }
}

void SiluMul(const float* gate, const float* up, int64_t n, float* y) {
#pragma omp parallel for schedule(static) if (n > 65536)
  for (int64_t i = 0; i < n; ++i) {
    const float g = gate[i];
    y[i] = g / (1.0f + std::exp(-g)) * up[i];
  }
}

void AttendPaged(const float* q, const PagedKvView& kv, std::span<const int32_t> block_table,
                 int kv_head, int64_t first, int64_t last, float scale, float* scores, float* out) {
  Attend(
      q, last - first + 1, kv.head_dim, scale,
      [&](int64_t j) { return kv.k + kv.Offset(block_table, first + j, kv_head); },
      [&](int64_t j) { return kv.v + kv.Offset(block_table, first + j, kv_head); }, scores, out);
}

void AttendRows(const float* q, const float* k, const float* v, int64_t stride, int64_t count,
                int head_dim, float scale, float* scores, float* out) {
  Attend(
      q, count, head_dim, scale, [&](int64_t j) { return k + j * stride; },
      [&](int64_t j) { return v + j * stride; }, scores, out);
}

}  // namespace sals::cpu
