// Helpers for the device tests: host encodings of f16/bf16, random inputs, device copies and
// tolerance checks. CUDA failures abort (tests only; library code returns a Status).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "sals/kernels/cuda_utils.h"
#include "sals/kernels/dtype.h"

namespace sals::kernels::gpu_test {

#define SALS_ASSERT_OK(expr)                        \
  do {                                              \
    const ::absl::Status sals_status_ = (expr);     \
    ASSERT_TRUE(sals_status_.ok()) << sals_status_; \
  } while (0)

template <typename T>
T ValueOrDie(absl::StatusOr<T> v) {
  if (!v.ok()) {
    std::fprintf(stderr, "%s\n", v.status().ToString().c_str());
    std::abort();
  }
  return *std::move(v);
}

// Fails the test (rather than skipping it) when no device is visible: these tests carry the
// `gpu` label and run only where one is expected.
inline void RequireDevice() {
  int count = 0;
  ASSERT_EQ(cudaGetDeviceCount(&count), cudaSuccess) << "no CUDA device";
  ASSERT_GT(count, 0) << "no CUDA device";
}

// A fresh seed, or SALS_TEST_SEED's value to replay a failure (every test that draws one gets it).
inline uint64_t TestSeed() {
  if (const char* env = std::getenv("SALS_TEST_SEED"); env != nullptr && *env != '\0') {
    return std::strtoull(env, nullptr, 10);
  }
  return (static_cast<uint64_t>(std::random_device{}()) << 32) ^ std::random_device{}();
}

// Each test draws fresh inputs; the seed is printed so a failure can be replayed
// (SALS_TEST_SEED=N).
inline std::mt19937_64 FreshRng() {
  const uint64_t seed = TestSeed();
  ::testing::Test::RecordProperty("seed", std::to_string(seed));
  std::printf("[ seed     ] %llu\n", static_cast<unsigned long long>(seed));
  return std::mt19937_64(seed);
}

inline uint16_t Encode(DType t, float x) {
  if (t == DType::kF16) return __half_as_ushort(__float2half_rn(x));
  return __bfloat16_as_ushort(__float2bfloat16_rn(x));
}

inline float Decode(DType t, uint16_t bits) {
  if (t == DType::kF16) return __half2float(__ushort_as_half(bits));
  return __bfloat162float(__ushort_as_bfloat16(bits));
}

// Half the distance between neighbouring values near 1 (relative rounding error bound), doubled
// for slack: f16 2^-10, bf16 2^-7.
inline float Eps(DType t) { return t == DType::kF16 ? 0x1p-10f : 0x1p-7f; }

// Values of the given dtype drawn uniformly from [lo, hi): `bits` holds the encoding and
// `values` the exact floats the device will see.
struct Tensor16 {
  std::vector<uint16_t> bits;
  std::vector<float> values;
};

inline Tensor16 RandomTensor(std::mt19937_64& rng, DType t, size_t n, float lo, float hi) {
  std::uniform_real_distribution<float> dist(lo, hi);
  Tensor16 out;
  out.bits.resize(n);
  out.values.resize(n);
  for (size_t i = 0; i < n; ++i) {
    out.bits[i] = Encode(t, dist(rng));
    out.values[i] = Decode(t, out.bits[i]);
  }
  return out;
}

template <typename T>
DeviceBuffer<T> ToDevice(std::span<const T> host) {
  DeviceBuffer<T> d = ValueOrDie(DeviceBuffer<T>::Allocate(host.size()));
  SALS_CUDA_CHECK(cudaMemcpy(d.get(), host.data(), host.size_bytes(), cudaMemcpyHostToDevice));
  return d;
}

template <typename T>
DeviceBuffer<T> ToDevice(const std::vector<T>& host) {
  return ToDevice(std::span<const T>(host));
}

template <typename T>
std::vector<T> ToHost(const DeviceBuffer<T>& d) {
  std::vector<T> host(d.size());
  SALS_CUDA_CHECK(cudaDeviceSynchronize());
  SALS_CUDA_CHECK(cudaMemcpy(host.data(), d.get(), d.bytes(), cudaMemcpyDeviceToHost));
  return host;
}

// A device buffer of n 16-bit values poisoned with NaN (0xffff in both encodings), so that any
// element a kernel fails to write shows up.
inline DeviceBuffer<uint16_t> PoisonedBuffer16(size_t n) {
  DeviceBuffer<uint16_t> d = ValueOrDie(DeviceBuffer<uint16_t>::Allocate(n));
  SALS_CUDA_CHECK(cudaMemset(d.get(), 0xff, n * sizeof(uint16_t)));
  return d;
}

// Expects |actual - expected| <= atol + rtol * |expected| everywhere (NaN never passes); reports
// the count and the worst few elements.
inline void ExpectClose(std::span<const float> actual, std::span<const float> expected, float atol,
                        float rtol, const std::string& what) {
  ASSERT_EQ(actual.size(), expected.size()) << what;
  size_t bad = 0;
  size_t worst = 0;
  double worst_excess = -1.0;
  for (size_t i = 0; i < actual.size(); ++i) {
    const double err = std::fabs(static_cast<double>(actual[i]) - expected[i]);
    const double tol = atol + rtol * std::fabs(expected[i]);
    const double excess = std::isnan(err) ? INFINITY : err - tol;
    if (!(err <= tol)) ++bad;
    if (excess > worst_excess) {
      worst_excess = excess;
      worst = i;
    }
  }
  EXPECT_EQ(bad, 0u) << what << ": " << bad << " of " << actual.size()
                     << " elements out of tolerance; worst at " << worst << ": got "
                     << actual[worst] << " want " << expected[worst] << " (atol " << atol
                     << ", rtol " << rtol << ")";
}

// ||actual - expected|| / ||expected|| (2-norms).
inline double RelativeL2(std::span<const float> actual, std::span<const float> expected) {
  double num = 0.0;
  double den = 0.0;
  for (size_t i = 0; i < actual.size(); ++i) {
    const double d = static_cast<double>(actual[i]) - expected[i];
    num += d * d;
    den += static_cast<double>(expected[i]) * expected[i];
  }
  return std::sqrt(num / std::max(den, 1e-30));
}

inline std::vector<float> DecodeAll(DType t, std::span<const uint16_t> bits) {
  std::vector<float> out(bits.size());
  for (size_t i = 0; i < bits.size(); ++i) out[i] = Decode(t, bits[i]);
  return out;
}

}  // namespace sals::kernels::gpu_test
