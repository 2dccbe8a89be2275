#include "engine/backend/cuda/cuda_sampler.h"

#include <algorithm>

#include "engine/backend/cuda/cuda_resources.h"
#include "engine/backend/cuda/device_sampling.h"

namespace sals::cuda {

namespace kn = ::sals::kernels;

absl::Status DeviceSampler::Enqueue(std::span<const RowSampling* const> rows,
                                    std::span<const int32_t> row_begin, float* logits, int vocab,
                                    cudaStream_t stream) {
  params_host_.clear();
  penalties_host_.clear();
  for (size_t i = 0; i < rows.size(); ++i) {
    if (rows[i] != nullptr) {
      AppendSampleRow(*rows[i], row_begin[i], &params_host_, &penalties_host_);
    }
  }
  const int64_t num_rows = static_cast<int64_t>(params_host_.size());
  const int64_t num_penalties = static_cast<int64_t>(penalties_host_.size());
  results_host_.resize(num_rows);
  if (num_rows == 0) return absl::OkStatus();
  const size_t ws_bytes = kn::SampleRowsWorkspaceBytes(num_rows, num_penalties);
  for (absl::StatusOr<bool> g :
       {Grow(&params_, num_rows), Grow(&penalties_, std::max<int64_t>(1, num_penalties)),
        Grow(&workspace_, ws_bytes), Grow(&results_, num_rows)}) {
    if (!g.ok()) return g.status();
  }
  SALS_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(params_.get(), params_host_.data(),
                                            num_rows * sizeof(kn::SampleRowParams),
                                            cudaMemcpyHostToDevice, stream));
  if (num_penalties > 0) {
    SALS_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(penalties_.get(), penalties_host_.data(),
                                              num_penalties * sizeof(kn::PenaltyEntry),
                                              cudaMemcpyHostToDevice, stream));
  }
  SALS_KERNELS_RETURN_IF_ERROR(kn::SampleRows(logits, vocab, params_.get(), num_rows,
                                              penalties_.get(), num_penalties, workspace_.get(),
                                              workspace_.bytes(), results_.get(), stream));
  SALS_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(results_host_.data(), results_.get(),
                                            num_rows * sizeof(kn::SampleRowResult),
                                            cudaMemcpyDeviceToHost, stream));
  return absl::OkStatus();
}

void DeviceSampler::Results(std::span<const RowSampling* const> rows,
                            std::vector<SampleResult>* results) const {
  results->assign(rows.size(), SampleResult{});
  for (size_t i = 0, k = 0; i < rows.size(); ++i) {
    if (rows[i] != nullptr) (*results)[i] = FromSampleRowResult(results_host_[k++]);
  }
}

}  // namespace sals::cuda
