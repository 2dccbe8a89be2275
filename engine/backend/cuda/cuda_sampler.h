// Sampling on the device: a step's sampled rows in the kernels' terms (device_sampling.h), one
// SampleRows launch over the logits, and only the results copied back to the host.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "engine/sampling/sampler.h"
#include "sals/kernels/cuda_utils.h"
#include "sals/kernels/sampling.h"

namespace sals::cuda {

class DeviceSampler {
 public:
  // Enqueues on `stream` one draw for each rows[i] != nullptr from logits row row_begin[i]
  // (`logits`: rows x vocab on the device; the penalties are applied in place) and the copy of
  // the results to the host.
  absl::Status Enqueue(std::span<const RowSampling* const> rows, std::span<const int32_t> row_begin,
                       float* logits, int vocab, cudaStream_t stream);

  // Once the stream has synchronized: results[i] for each rows[i] != nullptr, default elsewhere.
  void Results(std::span<const RowSampling* const> rows, std::vector<SampleResult>* results) const;

 private:
  std::vector<kernels::SampleRowParams> params_host_;
  std::vector<kernels::PenaltyEntry> penalties_host_;
  std::vector<kernels::SampleRowResult> results_host_;
  kernels::DeviceBuffer<kernels::SampleRowParams> params_;
  kernels::DeviceBuffer<kernels::PenaltyEntry> penalties_;
  kernels::DeviceBuffer<uint8_t> workspace_;
  kernels::DeviceBuffer<kernels::SampleRowResult> results_;
};

}  // namespace sals::cuda
