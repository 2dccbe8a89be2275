// Row-wise and elementwise kernels of a Llama-family decoder step. Activations are f16 or bf16
// (`dtype`), all arithmetic is fp32, and results are rounded once to `dtype`. Pointers are device
// pointers; every launcher enqueues on `stream` and returns launch/argument errors only.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/status/status.h"
#include "sals/kernels/dtype.h"

namespace sals::kernels {

// out[t] = table[tokens[t]] for rows of `hidden` elements. A token outside [0, vocab) yields a row
// of zeros (callers validate ids first; this only keeps the kernel memory-safe).
absl::Status EmbeddingGather(DType dtype, const void* table, int64_t vocab, int hidden,
                             const int32_t* tokens, int64_t num_tokens, void* out,
                             cudaStream_t stream);

// y[r] = x[r] / sqrt(mean(x[r]^2) + eps) * weight for `rows` rows of width n; y may alias x.
// Unlike HF (which rounds before the weight multiply) the product is rounded once.
absl::Status RmsNorm(DType dtype, const void* x, const void* weight, int64_t rows, int n, float eps,
                     void* y, cudaStream_t stream);

// residual += x (rounded to dtype and stored), then y = RmsNorm(residual) as above; y may alias x.
absl::Status AddRmsNorm(DType dtype, void* residual, const void* x, const void* weight,
                        int64_t rows, int n, float eps, void* y, cudaStream_t stream);

// In place HF rotate-half RoPE on a fused qkv buffer: each of the `num_tokens` rows holds
// [q: num_heads x head_dim | k: num_kv_heads x head_dim | v: ...] with `row_stride` elements
// between rows; the q and k heads of row t rotate pairs (i, i + head_dim/2) by
// positions[t] * inv_freq[i] (inv_freq: head_dim/2 floats on the device, scaling already applied).
// Accuracy: the angle is the fp32 product of fp32 values, as HF Transformers computes it, so its
// absolute error is about |angle| * 2^-23 (4e-3 rad at position 32K, 1.6e-2 at 128K for the
// fastest pair); sincosf is accurate to a few ulp on that angle.
absl::Status ApplyRopeQk(DType dtype, void* qkv, int64_t num_tokens, int64_t row_stride,
                         int num_heads, int num_kv_heads, int head_dim, const int32_t* positions,
                         const float* inv_freq, cudaStream_t stream);

// out[r, j] = silu(gate_up[r, j]) * gate_up[r, inter + j]: rows of [gate | up] (2 * inter wide)
// in, rows of `inter` out.
absl::Status SiluMul(DType dtype, const void* gate_up, int64_t rows, int inter, void* out,
                     cudaStream_t stream);

// out[r] = the index of the largest of logits[r, 0..vocab) (the first one on ties; NaN never
// wins; a row of only NaN gives 0). logits_dtype may be f32, f16 or bf16.
absl::Status ArgmaxRows(DType logits_dtype, const void* logits, int64_t rows, int vocab,
                        int32_t* out, cudaStream_t stream);

}  // namespace sals::kernels
