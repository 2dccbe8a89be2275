// Loads the CUDA backend (libsals_backend_cuda.so) at run time. The engine and every CPU-only
// program link no CUDA library: cuBLAS's static TLS, linked directly, breaks prometheus-cpp's
// exposer threads (docs/GPU.md), and a CPU-only machine has no CUDA libraries at all.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "engine/backend/backend.h"
#include "engine/backend/cuda/cuda_backend.h"
#include "engine/model/config.h"
#include "engine/model/weight_source.h"

namespace sals {

inline constexpr char kCudaBackendLibrary[] = "libsals_backend_cuda.so";

// Loads the library and creates a backend. The library is looked for at `library_path` when
// given, else at $SALS_CUDA_BACKEND_LIBRARY when set, else next to the running executable, else
// by name through the dynamic linker (LD_LIBRARY_PATH, the linker cache). Errors:
// FailedPrecondition when the library cannot be loaded (the message lists each place tried and
// why) or no GPU is visible; whatever the backend's creation returns otherwise. The library stays
// loaded for the life of the process.
absl::StatusOr<std::unique_ptr<CudaBackend>> LoadCudaBackend(const ModelConfig& config,
                                                             const WeightSource& weights,
                                                             const KvPoolConfig& pool,
                                                             const CudaBackendOptions& options = {},
                                                             const std::string& library_path = "");

}  // namespace sals
