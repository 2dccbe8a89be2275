#include "sals/kernels/cuda_utils.h"

#include "absl/strings/str_cat.h"

namespace sals::kernels {

absl::Status CudaStatus(cudaError_t err, const char* expr, const char* file, int line) {
  const std::string message = absl::StrCat(file, ":", line, ": ", expr, ": ", cudaGetErrorName(err),
                                           " (", cudaGetErrorString(err), ")");
  switch (err) {
    case cudaErrorMemoryAllocation:
      return absl::ResourceExhaustedError(message);
    case cudaErrorInvalidValue:
    case cudaErrorInvalidConfiguration:
      return absl::InvalidArgumentError(message);
    default:
      return absl::InternalError(message);
  }
}

}  // namespace sals::kernels
