// Host-side pieces shared by the two stage-4 paths of the SALS decode step (sals_decode.h):
// argument checks, the split combine, and the GEMM-rebuild launcher.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include "absl/status/status.h"
#include "sals/kernels/dtype.h"
#include "sals/kernels/sals_decode.h"
#include "sals/kernels/sals_kv.h"

namespace sals::kernels::internal {

// Shapes both paths support (sals_decode.h's list); `what` names the caller in errors.
absl::Status ValidateSalsDecode(const char* what, const SalsKvCache& cache,
                                const SalsSelectionPolicy& policy, int num_heads);

// Merges the per-tile partial outputs (workspace layout) into out [batch x num_heads x head_dim].
absl::Status LaunchSalsCombine(DType dtype, const SalsKvCache& cache,
                               const SalsSelectionPolicy& policy, const SalsDecodePlan& plan,
                               const float* partial_o, const float* partial_lse, void* out,
                               cudaStream_t stream);

// KV heads one block of the GEMM path's attention kernel serves: the most (a power of two) with
// at most 8 query heads that divides the KV heads.
int SalsGemmHeadsPerBlock(int num_kv_heads, int group);

// Sequences per gather + GEMM + attention round, so that a round's rebuilt keys stay in the L2.
int SalsGemmChunkSequences(const SalsKvCache& cache, int batch, int max_topk);

// Stage 4 with kGemm: for each chunk of plan.chunk_sequences sequences, gathers the selected
// latents, rebuilds their keys with one cuBLAS GEMM, attends; then combines. Arguments as
// SalsSparseAttention's, already validated.
absl::Status SalsGemmSparseAttention(DType dtype, const SalsKvCache& cache,
                                     const SalsSelectionPolicy& policy, const SalsDecodePlan& plan,
                                     const void* q, int64_t q_row_stride, const void* k_new,
                                     const void* v_new, int64_t kv_row_stride,
                                     const float* inv_freq, float scale, const int32_t* selected,
                                     void* workspace, void* out, cudaStream_t stream,
                                     cublasHandle_t blas);

}  // namespace sals::kernels::internal
