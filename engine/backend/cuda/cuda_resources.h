// RAII owners and checked calls for the CUDA resources the backend holds beyond those of
// sals/kernels/cuda_utils.h: a cuBLAS handle, pinned host memory and CUDA graphs; the growth of
// per-step device buffers, and the compute dtype in the kernels' terms.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <bit>
#include <cstddef>
#include <cstdint>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "engine/common/dtype.h"
#include "sals/kernels/cuda_utils.h"
#include "sals/kernels/dtype.h"

namespace sals::cuda {

// Activations and weights: 16-bit words, f16 or bf16 as the backend's options say.
using Buffer16 = kernels::DeviceBuffer<uint16_t>;

inline kernels::DType KernelDType(DType t) {
  return t == DType::kBF16 ? kernels::DType::kBF16 : kernels::DType::kF16;
}

inline absl::Status CublasStatus(cublasStatus_t st, const char* expr, const char* file, int line) {
  return absl::InternalError(
      absl::StrCat(file, ":", line, ": ", expr, ": ", cublasGetStatusString(st)));
}

#define SALS_CUBLAS_RETURN_IF_ERROR(expr)                                            \
  do {                                                                               \
    const cublasStatus_t sals_cublas_st_ = (expr);                                   \
    if (sals_cublas_st_ != CUBLAS_STATUS_SUCCESS) {                                  \
      return ::sals::cuda::CublasStatus(sals_cublas_st_, #expr, __FILE__, __LINE__); \
    }                                                                                \
  } while (0)

class CublasHandle {
 public:
  CublasHandle() = default;
  ~CublasHandle() {
    if (handle_ != nullptr) static_cast<void>(cublasDestroy(handle_));
  }
  CublasHandle(const CublasHandle&) = delete;
  CublasHandle& operator=(const CublasHandle&) = delete;
  CublasHandle(CublasHandle&& other) noexcept : handle_(std::exchange(other.handle_, nullptr)) {}
  CublasHandle& operator=(CublasHandle&& other) noexcept {
    std::swap(handle_, other.handle_);
    return *this;
  }

  static absl::StatusOr<CublasHandle> Create() {
    CublasHandle h;
    SALS_CUBLAS_RETURN_IF_ERROR(cublasCreate(&h.handle_));
    return h;
  }
  cublasHandle_t get() const { return handle_; }

 private:
  cublasHandle_t handle_ = nullptr;
};

// Page-locked host memory: the per-step metadata is staged here so that its upload is one
// asynchronous copy.
template <typename T>
class PinnedBuffer {
 public:
  PinnedBuffer() = default;
  ~PinnedBuffer() { Reset(); }
  PinnedBuffer(const PinnedBuffer&) = delete;
  PinnedBuffer& operator=(const PinnedBuffer&) = delete;
  PinnedBuffer(PinnedBuffer&& other) noexcept
      : ptr_(std::exchange(other.ptr_, nullptr)), count_(std::exchange(other.count_, 0)) {}
  PinnedBuffer& operator=(PinnedBuffer&& other) noexcept {
    std::swap(ptr_, other.ptr_);
    std::swap(count_, other.count_);
    return *this;
  }

  static absl::StatusOr<PinnedBuffer> Allocate(size_t count) {
    PinnedBuffer b;
    if (count > 0) {
      void* ptr = nullptr;
      SALS_CUDA_RETURN_IF_ERROR(cudaMallocHost(&ptr, count * sizeof(T)));
      b.ptr_ = static_cast<T*>(ptr);
      b.count_ = count;
    }
    return b;
  }
  T* get() const { return ptr_; }
  size_t size() const { return count_; }

 private:
  void Reset() {
    if (ptr_ != nullptr) static_cast<void>(cudaFreeHost(ptr_));
    ptr_ = nullptr;
    count_ = 0;
  }

  T* ptr_ = nullptr;
  size_t count_ = 0;
};

// A captured graph (destroyed once instantiated) and its executable instance.
class Graph {
 public:
  explicit Graph(cudaGraph_t g) : graph_(g) {}
  ~Graph() {
    if (graph_ != nullptr) static_cast<void>(cudaGraphDestroy(graph_));
  }
  Graph(const Graph&) = delete;
  Graph& operator=(const Graph&) = delete;
  cudaGraph_t get() const { return graph_; }

 private:
  cudaGraph_t graph_;
};

class GraphExec {
 public:
  GraphExec() = default;
  ~GraphExec() {
    if (exec_ != nullptr) static_cast<void>(cudaGraphExecDestroy(exec_));
  }
  GraphExec(const GraphExec&) = delete;
  GraphExec& operator=(const GraphExec&) = delete;
  GraphExec(GraphExec&& other) noexcept : exec_(std::exchange(other.exec_, nullptr)) {}
  GraphExec& operator=(GraphExec&& other) noexcept {
    std::swap(exec_, other.exec_);
    return *this;
  }

  static absl::StatusOr<GraphExec> Instantiate(const Graph& graph) {
    GraphExec e;
    SALS_CUDA_RETURN_IF_ERROR(cudaGraphInstantiate(&e.exec_, graph.get(), 0));
    return e;
  }
  absl::Status Launch(cudaStream_t stream) const {
    SALS_CUDA_RETURN_IF_ERROR(cudaGraphLaunch(exec_, stream));
    return absl::OkStatus();
  }

 private:
  cudaGraphExec_t exec_ = nullptr;
};

// Grows `buf` to at least `count` elements (a power of two, so that growth is rare); true when
// it moved, which invalidates captured graphs.
template <typename T>
absl::StatusOr<bool> Grow(kernels::DeviceBuffer<T>* buf, size_t count) {
  if (buf->size() >= count) return false;
  buf->Reset();  // contents are per step; free first so that peak memory is not doubled
  absl::StatusOr<kernels::DeviceBuffer<T>> grown =
      kernels::DeviceBuffer<T>::Allocate(std::bit_ceil(count));
  if (!grown.ok()) return grown.status();
  *buf = std::move(*grown);
  return true;
}

}  // namespace sals::cuda
