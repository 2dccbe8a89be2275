#include "engine/backend/cuda/cuda_key_covariance.h"

#include <climits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "sals/kernels/accumulate.h"

namespace sals::cuda {

absl::StatusOr<KeyCovarianceCapture> KeyCovarianceCapture::Create(const ModelConfig& config,
                                                                  DType dtype,
                                                                  cudaStream_t stream) {
  KeyCovarianceCapture c(config, dtype, stream);
  auto cublas = CublasHandle::Create();
  if (!cublas.ok()) return cublas.status();
  c.cublas_ = std::move(*cublas);
  SALS_CUBLAS_RETURN_IF_ERROR(cublasSetStream(c.cublas_.get(), stream));
  const size_t d = static_cast<size_t>(config.kv_width());
  auto step = kernels::DeviceBuffer<float>::Allocate(d * d);
  if (!step.ok()) return step.status();
  c.step_ = std::move(*step);
  auto sums = kernels::DeviceBuffer<double>::Allocate(config.num_layers * d * d);
  if (!sums.ok()) return sums.status();
  c.sums_ = std::move(*sums);
  SALS_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(c.sums_.get(), 0, c.sums_.bytes(), stream));
  return c;
}

absl::Status KeyCovarianceCapture::Add(int layer, const uint16_t* qkv, int64_t tokens) {
  if (tokens == 0) return absl::OkStatus();
  if (tokens > INT_MAX) {
    return absl::InvalidArgumentError(absl::StrCat("key covariance: ", tokens, " rows in a step"));
  }
  const int d = config_.kv_width();
  const int row = config_.q_width() + 2 * d;
  // Column-major, the step's keys are a D x tokens matrix at column offset q_width of each row
  // (leading dimension `row`); step = K K^T.
  const uint16_t* keys = qkv + config_.q_width();
  const cudaDataType_t type = dtype_ == DType::kBF16 ? CUDA_R_16BF : CUDA_R_16F;
  const float alpha = 1.0f, beta = 0.0f;
  SALS_CUBLAS_RETURN_IF_ERROR(cublasGemmEx(cublas_.get(), CUBLAS_OP_N, CUBLAS_OP_T, d, d,
                                           static_cast<int>(tokens), &alpha, keys, type, row, keys,
                                           type, row, &beta, step_.get(), CUDA_R_32F, d,
                                           CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  const int64_t n = static_cast<int64_t>(d) * d;
  SALS_KERNELS_RETURN_IF_ERROR(
      kernels::AccumulateF64(step_.get(), n, sums_.get() + layer * n, stream_));
  if (layer == 0) tokens_ += tokens;
  return absl::OkStatus();
}

absl::StatusOr<KeyCovarianceSums> KeyCovarianceCapture::Take() {
  const size_t n = static_cast<size_t>(config_.kv_width()) * config_.kv_width();
  KeyCovarianceSums out;
  out.tokens = tokens_;
  out.layers.assign(config_.num_layers, std::vector<double>(n));
  for (int l = 0; l < config_.num_layers; ++l) {
    SALS_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(out.layers[l].data(), sums_.get() + l * n,
                                              n * sizeof(double), cudaMemcpyDeviceToHost, stream_));
  }
  SALS_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(sums_.get(), 0, sums_.bytes(), stream_));
  SALS_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_));
  tokens_ = 0;
  return out;
}

}  // namespace sals::cuda
