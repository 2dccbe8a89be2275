// Error checks and RAII owners for CUDA resources (host code; compiled by the C++ compiler).
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <span>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace sals::kernels {

// A Status naming the failed expression, its place and CUDA's own message.
absl::Status CudaStatus(cudaError_t err, const char* expr, const char* file, int line);

// Returns (as absl::Status) from the enclosing function when a CUDA call fails.
#define SALS_CUDA_RETURN_IF_ERROR(expr)                                              \
  do {                                                                               \
    const cudaError_t sals_cuda_err_ = (expr);                                       \
    if (sals_cuda_err_ != cudaSuccess) {                                             \
      return ::sals::kernels::CudaStatus(sals_cuda_err_, #expr, __FILE__, __LINE__); \
    }                                                                                \
  } while (0)

// Propagates a non-OK absl::Status from the enclosing function.
#define SALS_KERNELS_RETURN_IF_ERROR(expr)       \
  do {                                           \
    const ::absl::Status sals_status_ = (expr);  \
    if (!sals_status_.ok()) return sals_status_; \
  } while (0)

// Tests and benchmarks only: aborts with the failure printed. Library code returns a Status.
#define SALS_CUDA_CHECK(expr)                                                   \
  do {                                                                          \
    const cudaError_t sals_cuda_err_ = (expr);                                  \
    if (sals_cuda_err_ != cudaSuccess) {                                        \
      std::fprintf(stderr, "%s:%d: %s failed: %s\n", __FILE__, __LINE__, #expr, \
                   cudaGetErrorString(sals_cuda_err_));                         \
      std::abort();                                                             \
    }                                                                           \
  } while (0)

// Owns `count` elements of device memory (cudaMalloc: plain, never managed).
template <typename T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  ~DeviceBuffer() { Reset(); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& other) noexcept
      : ptr_(std::exchange(other.ptr_, nullptr)), count_(std::exchange(other.count_, 0)) {}
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept {
    if (this != &other) {
      Reset();
      ptr_ = std::exchange(other.ptr_, nullptr);
      count_ = std::exchange(other.count_, 0);
    }
    return *this;
  }

  static absl::StatusOr<DeviceBuffer> Allocate(size_t count) {
    DeviceBuffer buffer;
    if (count > 0) {
      void* ptr = nullptr;
      SALS_CUDA_RETURN_IF_ERROR(cudaMalloc(&ptr, count * sizeof(T)));
      buffer.ptr_ = static_cast<T*>(ptr);
      buffer.count_ = count;
    }
    return buffer;
  }

  T* get() const { return ptr_; }
  size_t size() const { return count_; }
  size_t bytes() const { return count_ * sizeof(T); }

  // Synchronous copies of the whole buffer (sizes must match).
  absl::Status CopyFrom(std::span<const T> host) {
    if (host.size() != count_) return absl::InvalidArgumentError("DeviceBuffer: size mismatch");
    SALS_CUDA_RETURN_IF_ERROR(cudaMemcpy(ptr_, host.data(), bytes(), cudaMemcpyHostToDevice));
    return absl::OkStatus();
  }
  absl::Status CopyTo(std::span<T> host) const {
    if (host.size() != count_) return absl::InvalidArgumentError("DeviceBuffer: size mismatch");
    SALS_CUDA_RETURN_IF_ERROR(cudaMemcpy(host.data(), ptr_, bytes(), cudaMemcpyDeviceToHost));
    return absl::OkStatus();
  }

  // Frees the memory. A failure here has no caller to go to; it stays sticky in the context and
  // the next checked CUDA call reports it.
  void Reset() {
    if (ptr_ != nullptr) static_cast<void>(cudaFree(ptr_));
    ptr_ = nullptr;
    count_ = 0;
  }

 private:
  T* ptr_ = nullptr;
  size_t count_ = 0;
};

// Owns a non-blocking stream.
class Stream {
 public:
  Stream() = default;
  ~Stream() {
    if (stream_ != nullptr) static_cast<void>(cudaStreamDestroy(stream_));
  }
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  Stream(Stream&& other) noexcept : stream_(std::exchange(other.stream_, nullptr)) {}
  Stream& operator=(Stream&& other) noexcept {
    std::swap(stream_, other.stream_);
    return *this;
  }

  static absl::StatusOr<Stream> Create() {
    Stream s;
    SALS_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&s.stream_, cudaStreamNonBlocking));
    return s;
  }

  cudaStream_t get() const { return stream_; }
  absl::Status Synchronize() const {
    SALS_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_));
    return absl::OkStatus();
  }

 private:
  cudaStream_t stream_ = nullptr;
};

// Owns an event (timing enabled unless flags say otherwise).
class Event {
 public:
  Event() = default;
  ~Event() {
    if (event_ != nullptr) static_cast<void>(cudaEventDestroy(event_));
  }
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;
  Event(Event&& other) noexcept : event_(std::exchange(other.event_, nullptr)) {}
  Event& operator=(Event&& other) noexcept {
    std::swap(event_, other.event_);
    return *this;
  }

  static absl::StatusOr<Event> Create(unsigned flags = cudaEventDefault) {
    Event e;
    SALS_CUDA_RETURN_IF_ERROR(cudaEventCreateWithFlags(&e.event_, flags));
    return e;
  }

  cudaEvent_t get() const { return event_; }
  absl::Status Record(cudaStream_t stream) const {
    SALS_CUDA_RETURN_IF_ERROR(cudaEventRecord(event_, stream));
    return absl::OkStatus();
  }
  // Milliseconds from `start` to this event; both must have completed.
  absl::StatusOr<float> ElapsedMsSince(const Event& start) const {
    SALS_CUDA_RETURN_IF_ERROR(cudaEventSynchronize(event_));
    float ms = 0.0f;
    SALS_CUDA_RETURN_IF_ERROR(cudaEventElapsedTime(&ms, start.event_, event_));
    return ms;
  }

 private:
  cudaEvent_t event_ = nullptr;
};

}  // namespace sals::kernels
