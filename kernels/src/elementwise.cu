#include <climits>
#include <cmath>
#include <cstdint>

#include "absl/strings/str_cat.h"
#include "device_utils.cuh"
#include "sals/kernels/elementwise.h"

namespace sals::kernels {
namespace {

using internal::BlockSum;
using internal::CeilDiv;
using internal::DispatchActivation;
using internal::FromFloat;
using internal::LastLaunchStatus;
using internal::LoadVec;
using internal::StoreVec;
using internal::ToFloat;
using internal::Vec;
using internal::VecWidth;

// Rows are copied as raw words: the gather is the same for every 2-byte dtype.
template <typename Word>
__global__ void EmbeddingKernel(const Word* __restrict__ table, int64_t vocab, int64_t row_words,
                                const int32_t* __restrict__ tokens, Word* __restrict__ out) {
  const int64_t t = blockIdx.x;
  const int32_t token = tokens[t];
  const bool valid = token >= 0 && token < vocab;
  const Word* src = table + static_cast<int64_t>(valid ? token : 0) * row_words;
  Word* dst = out + t * row_words;
  for (int64_t i = threadIdx.x; i < row_words; i += blockDim.x) dst[i] = valid ? src[i] : Word{};
}

template <typename T, int V, bool kAdd>
__global__ void RmsNormKernel(T* residual, const T* x, const T* __restrict__ weight, int n,
                              float eps, T* y) {
  const int64_t row = blockIdx.x;
  const T* xr = x + row * n;
  T* rr = kAdd ? residual + row * n : nullptr;
  float sum_sq = 0.0f;
  for (int i = threadIdx.x * V; i < n; i += blockDim.x * V) {
    Vec<T, V> a = LoadVec<T, V>(xr + i);
    if constexpr (kAdd) {
      const Vec<T, V> r = LoadVec<T, V>(rr + i);
#pragma unroll
      for (int e = 0; e < V; ++e) a.v[e] = FromFloat<T>(ToFloat(a.v[e]) + ToFloat(r.v[e]));
      StoreVec(rr + i, a);
    }
#pragma unroll
    for (int e = 0; e < V; ++e) sum_sq += ToFloat(a.v[e]) * ToFloat(a.v[e]);
  }
  const float inv = rsqrtf(BlockSum(sum_sq) / n + eps);
  // Each thread re-reads only the elements it handled above, so y may alias x (or residual).
  const T* src = kAdd ? rr : xr;
  T* yr = y + row * n;
  for (int i = threadIdx.x * V; i < n; i += blockDim.x * V) {
    const Vec<T, V> a = LoadVec<T, V>(src + i);
    const Vec<T, V> w = LoadVec<T, V>(weight + i);
    Vec<T, V> o;
#pragma unroll
    for (int e = 0; e < V; ++e) o.v[e] = FromFloat<T>(ToFloat(a.v[e]) * inv * ToFloat(w.v[e]));
    StoreVec(yr + i, o);
  }
}

// Block (head_dim/2, heads_per_pass): thread x owns pair i for every head it visits, so each
// cos/sin is computed once per token and pair.
template <typename T>
__global__ void RopeKernel(T* qkv, int64_t row_stride, int num_rotated_heads, int head_dim,
                           const int32_t* __restrict__ positions,
                           const float* __restrict__ inv_freq) {
  const int64_t t = blockIdx.x;
  const int half = head_dim / 2;
  const int i = threadIdx.x;
  float s, c;
  sincosf(static_cast<float>(positions[t]) * inv_freq[i], &s, &c);
  T* row = qkv + t * row_stride;
  for (int h = threadIdx.y; h < num_rotated_heads; h += blockDim.y) {
    T* x = row + static_cast<int64_t>(h) * head_dim;
    const float a = ToFloat(x[i]);
    const float b = ToFloat(x[i + half]);
    x[i] = FromFloat<T>(a * c - b * s);
    x[i + half] = FromFloat<T>(b * c + a * s);
  }
}

template <typename T, int V>
__global__ void SiluMulKernel(const T* __restrict__ gate_up, int inter, T* __restrict__ out) {
  const int64_t row = blockIdx.x;
  const int j = (blockIdx.y * blockDim.x + threadIdx.x) * V;
  if (j >= inter) return;
  const T* g_row = gate_up + row * 2 * inter;
  const Vec<T, V> g = LoadVec<T, V>(g_row + j);
  const Vec<T, V> u = LoadVec<T, V>(g_row + inter + j);
  Vec<T, V> o;
#pragma unroll
  for (int e = 0; e < V; ++e) {
    const float gf = ToFloat(g.v[e]);
    o.v[e] = FromFloat<T>(gf / (1.0f + expf(-gf)) * ToFloat(u.v[e]));
  }
  StoreVec(out + row * inter + j, o);
}

// The better of two (value, index) candidates: larger value, then smaller index; NaN never wins.
__device__ __forceinline__ void TakeBetter(float v, int i, float& best, int& best_i) {
  if (v > best || (v == best && i < best_i)) {
    best = v;
    best_i = i;
  }
}

template <typename T>
__global__ void ArgmaxKernel(const T* __restrict__ logits, int vocab, int32_t* __restrict__ out) {
  __shared__ float warp_best[32];
  __shared__ int warp_index[32];
  const T* x = logits + static_cast<int64_t>(blockIdx.x) * vocab;
  float best = -INFINITY;
  int best_i = INT_MAX;
  for (int i = threadIdx.x; i < vocab; i += blockDim.x) TakeBetter(ToFloat(x[i]), i, best, best_i);
#pragma unroll
  for (int off = 16; off > 0; off /= 2) {
    TakeBetter(__shfl_xor_sync(0xffffffffu, best, off), __shfl_xor_sync(0xffffffffu, best_i, off),
               best, best_i);
  }
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  if (lane == 0) {
    warp_best[warp] = best;
    warp_index[warp] = best_i;
  }
  __syncthreads();
  if (warp != 0) return;
  best = -INFINITY;
  best_i = INT_MAX;
  if (lane < static_cast<int>(blockDim.x / 32)) {
    best = warp_best[lane];
    best_i = warp_index[lane];
  }
#pragma unroll
  for (int off = 16; off > 0; off /= 2) {
    TakeBetter(__shfl_xor_sync(0xffffffffu, best, off), __shfl_xor_sync(0xffffffffu, best_i, off),
               best, best_i);
  }
  if (lane == 0) out[blockIdx.x] = best_i == INT_MAX ? 0 : best_i;
}

int RowThreads(int64_t work_items) {
  return static_cast<int>(
      std::min<int64_t>(1024, std::max<int64_t>(32, CeilDiv(work_items, 32) * 32)));
}

absl::Status CheckRows(const char* what, int64_t rows, int64_t n) {
  if (rows < 0 || n <= 0 || rows > INT_MAX) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": bad shape rows=", rows, " n=", n));
  }
  return absl::OkStatus();
}

absl::Status LaunchRmsNorm(DType dtype, void* residual, const void* x, const void* weight,
                           int64_t rows, int n, float eps, void* y, cudaStream_t stream, bool add) {
  const char* what = add ? "AddRmsNorm" : "RmsNorm";
  SALS_KERNELS_RETURN_IF_ERROR(CheckRows(what, rows, n));
  if (rows == 0) return absl::OkStatus();
  return DispatchActivation(dtype, what, [&]<typename T>(T) {
    auto launch = [&]<int V>() {
      const int threads = RowThreads(CeilDiv(n, V));
      if (add) {
        RmsNormKernel<T, V, true><<<rows, threads, 0, stream>>>(
            static_cast<T*>(residual), static_cast<const T*>(x), static_cast<const T*>(weight), n,
            eps, static_cast<T*>(y));
      } else {
        RmsNormKernel<T, V, false><<<rows, threads, 0, stream>>>(nullptr, static_cast<const T*>(x),
                                                                 static_cast<const T*>(weight), n,
                                                                 eps, static_cast<T*>(y));
      }
      return LastLaunchStatus(what);
    };
    if (VecWidth(n, 8, {residual, x, weight, y}, sizeof(T)) == 8)
      return launch.template operator()<8>();
    return launch.template operator()<1>();
  });
}

}  // namespace

absl::Status EmbeddingGather(DType dtype, const void* table, int64_t vocab, int hidden,
                             const int32_t* tokens, int64_t num_tokens, void* out,
                             cudaStream_t stream) {
  SALS_KERNELS_RETURN_IF_ERROR(CheckRows("EmbeddingGather", num_tokens, hidden));
  if (vocab <= 0) return absl::InvalidArgumentError("EmbeddingGather: empty table");
  if (num_tokens == 0) return absl::OkStatus();
  const int64_t row_bytes = static_cast<int64_t>(hidden) * DTypeBytes(dtype);
  auto launch = [&]<typename Word>() {
    const int64_t words = row_bytes / static_cast<int64_t>(sizeof(Word));
    EmbeddingKernel<Word><<<num_tokens, RowThreads(words), 0, stream>>>(
        static_cast<const Word*>(table), vocab, words, tokens, static_cast<Word*>(out));
    return LastLaunchStatus("EmbeddingGather");
  };
  switch (VecWidth(row_bytes, 16, {table, out}, 1)) {
    case 16:
      return launch.template operator()<uint4>();
    case 8:
      return launch.template operator()<uint2>();
    case 4:
      return launch.template operator()<uint32_t>();
    default:
      return launch.template operator()<uint16_t>();
  }
}

absl::Status RmsNorm(DType dtype, const void* x, const void* weight, int64_t rows, int n, float eps,
                     void* y, cudaStream_t stream) {
  return LaunchRmsNorm(dtype, nullptr, x, weight, rows, n, eps, y, stream, /*add=*/false);
}

absl::Status AddRmsNorm(DType dtype, void* residual, const void* x, const void* weight,
                        int64_t rows, int n, float eps, void* y, cudaStream_t stream) {
  return LaunchRmsNorm(dtype, residual, x, weight, rows, n, eps, y, stream, /*add=*/true);
}

absl::Status ApplyRopeQk(DType dtype, void* qkv, int64_t num_tokens, int64_t row_stride,
                         int num_heads, int num_kv_heads, int head_dim, const int32_t* positions,
                         const float* inv_freq, cudaStream_t stream) {
  SALS_KERNELS_RETURN_IF_ERROR(CheckRows("ApplyRopeQk", num_tokens, head_dim));
  if (head_dim % 2 != 0 || head_dim > 2048 || num_heads <= 0 || num_kv_heads <= 0 ||
      row_stride < static_cast<int64_t>(num_heads + 2 * num_kv_heads) * head_dim) {
    return absl::InvalidArgumentError(absl::StrCat("ApplyRopeQk: bad shape heads=", num_heads, "/",
                                                   num_kv_heads, " head_dim=", head_dim,
                                                   " row_stride=", row_stride));
  }
  if (num_tokens == 0) return absl::OkStatus();
  return DispatchActivation(dtype, "ApplyRopeQk", [&]<typename T>(T) {
    const int half = head_dim / 2;
    const int heads = num_heads + num_kv_heads;
    const dim3 block(half, std::max(1, std::min(heads, 256 / half)));
    RopeKernel<T><<<num_tokens, block, 0, stream>>>(static_cast<T*>(qkv), row_stride, heads,
                                                    head_dim, positions, inv_freq);
    return LastLaunchStatus("ApplyRopeQk");
  });
}

absl::Status SiluMul(DType dtype, const void* gate_up, int64_t rows, int inter, void* out,
                     cudaStream_t stream) {
  SALS_KERNELS_RETURN_IF_ERROR(CheckRows("SiluMul", rows, inter));
  if (rows == 0) return absl::OkStatus();
  return DispatchActivation(dtype, "SiluMul", [&]<typename T>(T) {
    auto launch = [&]<int V>() {
      constexpr int kThreads = 256;
      const dim3 grid(rows, CeilDiv(inter, kThreads * V));
      SiluMulKernel<T, V><<<grid, kThreads, 0, stream>>>(static_cast<const T*>(gate_up), inter,
                                                         static_cast<T*>(out));
      return LastLaunchStatus("SiluMul");
    };
    if (VecWidth(inter, 8, {gate_up, out}, sizeof(T)) == 8) return launch.template operator()<8>();
    return launch.template operator()<1>();
  });
}

absl::Status ArgmaxRows(DType logits_dtype, const void* logits, int64_t rows, int vocab,
                        int32_t* out, cudaStream_t stream) {
  SALS_KERNELS_RETURN_IF_ERROR(CheckRows("ArgmaxRows", rows, vocab));
  if (rows == 0) return absl::OkStatus();
  auto launch = [&]<typename T>() {
    ArgmaxKernel<T>
        <<<rows, RowThreads(vocab), 0, stream>>>(static_cast<const T*>(logits), vocab, out);
    return LastLaunchStatus("ArgmaxRows");
  };
  switch (logits_dtype) {
    case DType::kF32:
      return launch.template operator()<float>();
    case DType::kF16:
      return launch.template operator()<__half>();
    case DType::kBF16:
      return launch.template operator()<__nv_bfloat16>();
  }
  return absl::InvalidArgumentError("ArgmaxRows: unknown dtype");
}

}  // namespace sals::kernels
